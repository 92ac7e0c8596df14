import os.path; exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')).read())
def rec(method, mp, params):
    return MergeRecipe(method=method, base_model=base, models=E, parameters=params, model_parameters=mp, dtype="float32", seed=0)
for method in ["ties","dare_ties"]:
  for norm in [False]:
    for dm in [1.0, 0.5, 0.3, 0.1]:
        for dl in [1.0, 0.5]:
            run(f"{method} norm={norm} dens math {dm} lang {dl}", rec(method, [{"weight":1.0,"density":dm},{"weight":1.0,"density":dl},{"weight":0.0,"density":1.0}], {"lambda":1.0,"normalize":norm}))
