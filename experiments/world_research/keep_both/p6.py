import os.path; exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')).read())
import json
data={}
for l in open(f"{bench.world.root}/tasks/data/tw_lang_vl.jsonl"):
    d=json.loads(l); data[d['id']]=d
def cat(d):
    g=d['choices'][d['gold']].split()
    return 'de' if 'de' in g else 'mi' if 'mi' in g else 'none'
def m(head, body): return [{"filter":"lm_head","value":head},{"value":body}]
for label, r in [("TA 1,1", ta([{"weight":1.0},{"weight":1.0},{"weight":0.0}])), ("head0", ta([{"weight":m(0,1)},{"weight":1.0},{"weight":0.0}])), ("body .5 head0", ta([{"weight":m(0,.5)},{"weight":1.0},{"weight":0.0}]))]:
    resp=bench.scorer.answer(r, {"tw_lang_vl": bench.suite.item_ids("tw_lang_vl")})["tw_lang_vl"]
    by={}
    for i,v in resp.items(): by.setdefault(cat(data[i]),[]).append(v)
    print(label, {k:(len(v), round(100*sum(v)/len(v),1)) for k,v in by.items()})
