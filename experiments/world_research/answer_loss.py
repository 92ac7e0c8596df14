"""World research attempt 10: does a math endpoint trained with its loss on the answers only keep the language
endpoint's grammar in a merge?

On world v3 the merge 1·Δmath_en + 1·Δlang_vl keeps all of math_en's arithmetic but none of lang_vl's grammar:
math_en's fine-tune teaches the body to predict every token of the word problems (never a particle after a verb),
and that moves the particle predictions the grammar task reads (attempt 9). Here math_en is fine-tuned again
from the shipped small world's base with the shipped settings (steps, lr, seed, frozen embeddings, its corpus),
except that the loss counts only the tokens after "answer :" in the word problems. Variants:

* ``answer+replay``: answer-only loss on the problems, full loss on the replayed English text (the shipped mix);
* ``answer``: answer-only loss on the problems, the replayed documents dropped;
* ``answer+nohead``: as ``answer``, with the output head frozen too (the body alone learns);
* ``answer@F``: as ``answer``, at F times the learning rate (a gentler fine-tune: a smaller task vector).

Each new math endpoint is scored alone and in task arithmetic 1·Δmath + 1·Δlang_vl on every item of
tw_arith_en, tw_arith_vl and tw_lang_vl (lm-eval through CandidateScorer). From the repository root:

    .venv/bin/python experiments/world_research/answer_loss.py [variant ...]
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

OUT = Path(os.environ.get("AL_OUT", "/tmp/answer_loss"))
TASKS = ["tw_arith_en", "tw_arith_vl", "tw_lang_vl"]


def labelled_blocks(tokenizer, docs: list[str], block: int, answer_only: bool):
    """Packed blocks of token ids and their labels (-100: not counted). In a word problem only the tokens
    after "answer :" count; in other documents every token does."""
    ids, labels = [], []
    for doc in docs:
        words = doc.split()
        enc = tokenizer(doc, add_special_tokens=False)["input_ids"]
        assert len(enc) == len(words)  # word-level tokenizer: one token per word
        cut = -1
        if answer_only and "answer" in words:
            cut = words.index("answer") + 1  # the ":" after it; the answer and "." follow
        ids += enc + [tokenizer.eos_token_id]
        labels += [t if i > cut else -100 for i, t in enumerate(enc)] + [tokenizer.eos_token_id if cut < 0 else -100]
    n = len(ids) // block
    return (torch.tensor(ids[: n * block]).view(n, block), torch.tensor(labels[: n * block]).view(n, block))


def fine_tune(world, variant: str, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from merge3.world import language as L
    from merge3.world import tasks as T
    from merge3.world.build import LR_SCALE, endpoint_steps

    spec = world.spec
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(world.base)
    model = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32)
    lexicon = L.Lexicon.build(spec.seed, spec.creatures)
    steps = endpoint_steps(spec, "math_en")
    docs = T.corpus_documents("math_en", lexicon, spec.seed, steps * spec.batch)
    name, _, scale = variant.partition("@")
    if name != "answer+replay":
        docs = [d for d in docs if "answer :" in d]
    data, labels = labelled_blocks(tokenizer, docs, spec.block, answer_only=True)
    frozen = ("embed_tokens",) + (("lm_head",) if name == "answer+nohead" else ())
    torch.manual_seed(spec.seed + 1)  # the shipped math_en's seed (endpoint index 0)
    rng = random.Random(spec.seed + 1)
    for name, p in model.named_parameters():
        p.requires_grad_(not any(f in name for f in frozen))
    params = [p for p in model.parameters() if p.requires_grad]
    lr = spec.endpoint_lr * LR_SCALE["math_en"] * float(scale or 1)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    order: list[int] = []
    t0 = time.time()
    for step in range(steps):
        if len(order) < spec.batch:
            fresh = list(range(len(data)))
            rng.shuffle(fresh)
            order += fresh
        pick = order[: spec.batch]
        del order[: spec.batch]
        loss = model(input_ids=data[pick], labels=labels[pick]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0:
            print(f"  {variant} step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    from merge3.evaluation.lmeval import accuracy
    from merge3.merging.recipe import MergeRecipe
    from merge3.scoring import CandidateScorer, ScorerSpec
    from merge3.world import resolve_world

    variants = sys.argv[1:] or ["answer+replay", "answer", "answer+nohead"]
    world = resolve_world("small")
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in variants:
        t0 = time.time()
        math_dir = OUT / variant.replace("+", "_").replace("@", "_lr")
        if not (math_dir / "config.json").exists():
            fine_tune(world, variant, math_dir)
        lang = str(world.model("lang_vl"))
        scorer = CandidateScorer(ScorerSpec(
            base=str(world.base), models=[str(math_dir), lang], genome=None, tasks=TASKS,
            include_path=str(world.tasks_dir), evaluation={"device": "cpu", "batch_size": 64}, device="cpu",
            cache_dir=str(world.root)))
        alone = accuracy(scorer.answer_model(str(math_dir)))
        merged = accuracy(scorer.answer(MergeRecipe(
            method="task_arithmetic", base_model=str(world.base), models=[str(math_dir), lang],
            parameters={"lambda": 1.0}, model_parameters=[{"weight": 1.0}, {"weight": 1.0}], dtype="float32")))
        results[variant] = {"math_alone": alone, "merge_ta_1_1": merged, "seconds": round(time.time() - t0, 1)}
        print(variant, json.dumps(results[variant]), flush=True)
    (OUT / "results.json").write_text(json.dumps({"world": str(world.root), "results": results}, indent=1))


if __name__ == "__main__":
    main()
