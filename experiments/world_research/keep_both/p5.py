import os.path; exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')).read())
def rec(method, mp, params):
    return MergeRecipe(method=method, base_model=base, models=E, parameters=params, model_parameters=mp, dtype="float32", seed=0)
def f(head, body): return [{"filter":"lm_head","value":head},{"value":body}]
for dh in [0.5, 0.2, 0.05]:
    for wh in [1.0, 0.5]:
        run(f"ties math head dens {dh} w {wh}", rec("ties", [{"weight":f(wh,1.0),"density":f(dh,1.0)},{"weight":1.0,"density":1.0},{"weight":0.0,"density":1.0}], {"lambda":1.0,"normalize":False}))
