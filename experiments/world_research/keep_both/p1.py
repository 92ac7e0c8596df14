import os.path; exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')).read())
def w(emb, head, rest): return [{"filter":"embed_tokens","value":emb},{"filter":"lm_head","value":head},{"value":rest}]
run("TA 1,1,0", ta([{"weight":1.0},{"weight":1.0},{"weight":0.0}]))
run("math head 0", ta([{"weight":w(1,0,1)},{"weight":1.0},{"weight":0.0}]))
run("math head 0.5", ta([{"weight":w(1,0.5,1)},{"weight":1.0},{"weight":0.0}]))
run("lang 1.5", ta([{"weight":1.0},{"weight":1.5},{"weight":0.0}]))
