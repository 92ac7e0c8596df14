import os.path; exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')).read())
import itertools
L=4
def mw(attn, mlp, head, rest):
    # attn/mlp: per-layer lists
    return [{"filter":"self_attn","value":attn},{"filter":"mlp","value":mlp},{"filter":"lm_head","value":head},{"value":rest}]
one=[1.0]*4
for l in range(4):
    z=[1.0]*4; z[l]=0.0
    run(f"math attn L{l}=0", ta([{"weight":mw(z,one,1.0,1.0)},{"weight":1.0},{"weight":0.0}]))
    run(f"math mlp L{l}=0", ta([{"weight":mw(one,z,1.0,1.0)},{"weight":1.0},{"weight":0.0}]))
run("math rest(norms)=0", ta([{"weight":mw(one,one,1.0,0.0)},{"weight":1.0},{"weight":0.0}]))
run("math attn all 0", ta([{"weight":mw([0.]*4,one,1.0,1.0)},{"weight":1.0},{"weight":0.0}]))
run("math mlp all 0", ta([{"weight":mw(one,[0.]*4,1.0,1.0)},{"weight":1.0},{"weight":0.0}]))
run("math body only (head 0, lang)", ta([{"weight":mw(one,one,0.0,1.0)},{"weight":1.0},{"weight":0.0}]))
run("lang alone", ta([{"weight":0.0},{"weight":1.0},{"weight":0.0}]))
run("math alone", ta([{"weight":1.0},{"weight":0.0},{"weight":0.0}]))
