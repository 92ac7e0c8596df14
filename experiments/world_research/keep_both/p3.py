import os.path; exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')).read())
def mw(body, head): return [{"filter":"lm_head","value":head},{"value":body}]
for body, head in [(0,1),(0.5,0),(0.7,0),(1,-0.5),(1.2,0),(0.5,0.5),(1,0.25)]:
    run(f"math body {body} head {head} + lang 1", ta([{"weight":mw(body,head)},{"weight":1.0},{"weight":0.0}]))
for lh in [0.5, 2.0, 3.0]:
    run(f"math body 1 head 0; lang head {lh}", ta([{"weight":mw(1,0)},{"weight":[{"filter":"lm_head","value":lh},{"value":1.0}]},{"weight":0.0}]))
