import os.path; exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')).read())
import json, yaml, sys
from merge3.genome import Genome
pts=[]
for run_name in sys.argv[1:]:
    rd=os.path.join(os.environ.get('KB_RUNS', '/tmp/kb/runs'), run_name)
    cfg=yaml.safe_load(open(f'{rd}/config.yaml'))
    g=Genome.from_config({k:v for k,v in cfg['merge'].items() if k in ('method','parameters','fixed','layer_granularity','filters')}, len(cfg['models']), 4)
    for l in open(f'{rd}/evaluations.jsonl'):
        r=json.loads(l)
        if r['status']=='ok': pts.append((r['objectives']['tw_arith_en']*100, r['objectives']['tw_lang_vl']*100, run_name, r, g, cfg))
front=[p for p in pts if not any(q[0]>=p[0] and q[1]>=p[1] and (q[0]>p[0] or q[1]>p[1]) for q in pts)]
front.sort(key=lambda p:p[0])
out=[]
for a, l, rn, r, g, cfg in front:
    rec=g.decode(r['genome'], cfg['base'], cfg['models'], seed=r['seed'])
    rec.models=list(rec.models)+[E[2]]; rec.model_parameters=list(rec.model_parameters)+[{k:(0.0 if k=='weight' else 1.0) for k in rec.model_parameters[0]}]
    acc=bench.scorer.answer(rec, {t: bench.suite.item_ids(t) for t in ['tw_arith_vl']})
    from merge3.evaluation.lmeval import accuracy
    t=round(100*accuracy(acc)['tw_arith_vl'],1)
    km=(a-27.3)/60.3; kl=(l-48.2)/51.8
    print(f"{rn:7s} {r['candidate']} arith_en {a:.1f} lang_vl {l:.1f} target {t} kept math {km:.2f} lang {kl:.2f}", flush=True)
    out.append({"run":rn,"candidate":r['candidate'],"tw_arith_en":round(a,1),"tw_lang_vl":round(l,1),"tw_arith_vl":t,"kept_math":round(km,3),"kept_lang":round(kl,3),"recipe":rec.to_dict() if hasattr(rec,'to_dict') else None})
json.dump(out, open(os.path.join(os.environ.get('KB_RUNS', '/tmp/kb/runs'), 'front_target.json'),'w'), indent=1)
