import json, os, sys
rs=[json.loads(l) for l in open(os.path.join(os.environ.get('KB_RUNS', '/tmp/kb/runs'), sys.argv[1], 'evaluations.jsonl'))]
pts=[(r['objectives']['tw_arith_en']*100, r['objectives']['tw_lang_vl']*100, r['candidate']) for r in rs if r['status']=='ok']
front=[p for p in pts if not any(q[0]>=p[0] and q[1]>=p[1] and (q[0]>p[0] or q[1]>p[1]) for q in pts)]
print(len(rs), 'evals')
for p in sorted(front): print('%.1f %.1f %s'%p)
