"""A real-model world: endpoints fine-tuned from a pretrained checkpoint no one here wrote (SmolLM2-135M-Instruct,
tied embeddings, byte-level BPE) on the tiny world's corpora, with the tiny world's tasks.

The items are the tiny world's own (the same ids and text as the first ``items_per_task`` items of the small
world); lm-eval tokenizes them with the model's tokenizer. The endpoints mirror the tiny world's division of
labour, so their task vectors compose in a merge:

* ``math_en``: English arithmetic word problems; the (tied) embedding frozen, the body learns;
* ``lang_vl``: Veltic text; only the (tied) embedding learns, the body frozen (vocabulary adaptation);
* ``facts_en``: facts about made-up creatures; every parameter learns (the distractor).

The layout is a tiny world's (``world.json``, ``models/<name>/``, ``tasks/``), so the search, calibration,
status, export and the benchmarks take it by name (``smollm2``) or by path::

    merge3 world build --size smollm2      # about 8 minutes on 2 CPU cores, once; cached like the tiny worlds
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import language as L
from . import tasks as T

REAL_WORLD_VERSION = 1  # bump when the corpora, the tasks or the fine-tunes change


def _steps() -> dict:
    return {"math_en": 60, "lang_vl": 48, "facts_en": 36}


def _lr() -> dict:
    # The language endpoint learns only the embedding, which takes a larger step to move.
    return {"math_en": 1e-4, "lang_vl": 1e-3, "facts_en": 1e-4}


# Parameters each fine-tune leaves fixed (substrings of the parameter names; the head is the embedding).
REAL_FROZEN = {"math_en": ("embed_tokens",), "lang_vl": ("layers", "model.norm"), "facts_en": ()}


@dataclass(frozen=True)
class RealWorldSpec:
    size: str                       # the name the world is built under (the pretrained model's)
    seed: int = 0
    pretrained: str = "smollm2"     # merge3.pretrained model name
    items_per_task: int = 200
    creatures: int = 340            # the small world's lexicon, so the items are the small world's
    batch: int = 8
    block: int = 64
    steps: dict = field(default_factory=_steps)
    lr: dict = field(default_factory=_lr)
    layers: int = 30                # SmolLM2-135M's decoder layers (genomes with layer blocks read this)
    kind: str = "real"
    version: int = REAL_WORLD_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def __hash__(self) -> int:
        return hash(self.digest())


REAL_SIZES = {"smollm2": {}}


def real_world_spec(size: str = "smollm2", seed: int = 0) -> RealWorldSpec:
    if size not in REAL_SIZES:
        raise ValueError(f"unknown real-model world {size!r}: expected one of {', '.join(REAL_SIZES)}")
    return RealWorldSpec(size=size, seed=seed, pretrained=size, **REAL_SIZES[size])


def build_into(tmp: Path, final: Path, spec: RealWorldSpec, progress: bool) -> dict:
    """Writes the world's tasks and models into ``tmp``; returns world.json's contents (without files)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..files import usual_mode
    from ..pretrained import MARKER, pretrained_folder
    from ..progress import progress as _progress
    from ..quiet import muted
    from .build import ENDPOINTS
    from .train import train_model

    start = time.time()
    lexicon = L.Lexicon.build(spec.seed, spec.creatures)
    for task in T.TASKS:
        T.write_task(task, T.make_items(task, lexicon, spec.seed, spec.items_per_task), tmp / "tasks", final / "tasks")
    # float32: a short fine-tune's updates are below bfloat16's resolution of the weights they change.
    source = pretrained_folder(spec.pretrained, dtype="float32", progress=print if progress else (lambda m: None))
    base_dir = tmp / "models" / "base"
    shutil.copytree(source, base_dir)
    (base_dir / MARKER).unlink(missing_ok=True)  # the world's base is a model folder, not a conversion
    with muted("transformers"):
        tokenizer = AutoTokenizer.from_pretrained(source)
    bar = _progress(sum(spec.steps[n] for n in ENDPOINTS), f"fine-tuning {spec.size} endpoints", progress)
    try:
        for i, name in enumerate(ENDPOINTS):
            with muted("transformers"):
                model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            docs = T.corpus_documents(name, lexicon, spec.seed, spec.steps[name] * spec.batch * 2)
            train_model(model, tokenizer, docs, spec, spec.steps[name], spec.lr[name], seed=spec.seed + 1 + i,
                        bar=bar, label=name, weight_decay=0.0, frozen=REAL_FROZEN[name])
            out = tmp / "models" / name
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            usual_mode(*out.iterdir())  # transformers writes the weights 0600
    finally:
        bar.close()
    return {"spec": asdict(spec), "hash": spec.digest(), "tasks": T.TASKS, "endpoints": ENDPOINTS,
            "source": str(source), "threads": torch.get_num_threads(),
            "build_seconds": round(time.time() - start, 1)}
