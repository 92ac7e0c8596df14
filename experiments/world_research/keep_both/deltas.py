import os, sys; sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
import os; os.environ["HF_HUB_OFFLINE"]="1"
import torch; torch.set_num_threads(1)
from merge3.world import resolve_world
from safetensors.torch import load_file
import glob
w = resolve_world('small'); print(w.root)
def sd(name):
    d={}
    for f in glob.glob(str(w.model(name))+"/*.safetensors"): d.update(load_file(f))
    return d
b=sd('base')
for n in ['math_en','lang_vl','facts_en']:
    m=sd(n); print(n)
    for k in sorted(m):
        dn=(m[k]-b[k]).norm().item()
        if dn>0: print(f"  {k:50s} {dn:.3f} / {b[k].norm().item():.3f}")
