"""The tiny world: deterministic builds, offline loading, lm-eval on every task, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from merge3.world import TASKS, build_world, load_world, world_spec
from merge3.world import language as L
from merge3.world import tasks as T


def test_same_seed_same_hashes(micro_world, tmp_path, monkeypatch):
    """A second build gives the same bytes; it fine-tunes the endpoints one after another in this process, the
    fixture's build (on a machine with 2 or more cores) in parallel processes."""
    from merge3.world import build as B

    monkeypatch.setattr(B, "build_processes", lambda: 1)
    again = build_world("micro", out=tmp_path / "again", progress=False)
    assert again.files == micro_world.files
    assert any(k.endswith(".safetensors") for k in again.files)
    assert sum(k.endswith(".jsonl") for k in again.files) == len(TASKS)


def test_cached_world_is_reused(micro_world):
    before = (micro_world.root / "world.json").stat().st_mtime_ns
    assert build_world("micro", progress=False).root == micro_world.root
    assert (micro_world.root / "world.json").stat().st_mtime_ns == before


def test_concurrent_build_of_the_same_world(micro_world, tmp_path, monkeypatch):
    """Two processes building one world: the one that finishes second returns the first one's world."""
    import shutil

    from merge3.world import build as B

    def other_process_finishes_first(tmp, final, spec, progress):
        shutil.copytree(micro_world.root, final)
        tmp.mkdir(parents=True)

    monkeypatch.setattr(B, "_build_into", other_process_finishes_first)
    world = build_world("micro", out=tmp_path / "w", progress=False)
    assert world.files == micro_world.files
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # our half-built copy is gone


def test_other_seed_changes_the_world():
    a, b = world_spec("micro", 0), world_spec("micro", 1)
    assert a.digest() != b.digest()
    lex_a, lex_b = L.Lexicon.build(0, 10), L.Lexicon.build(1, 10)
    assert lex_a.to_veltic != lex_b.to_veltic


def test_item_ids_stable_across_sizes():
    lexicon = L.Lexicon.build(0, 40)
    for task in TASKS:
        short, long = T.make_items(task, lexicon, 0, 10), T.make_items(task, lexicon, 0, 30)
        assert short == long[:10]
        assert [it["id"] for it in short] == [f"{task}-{i:05d}" for i in range(10)]


def test_items_are_four_way_multiple_choice_with_spread():
    lexicon = L.Lexicon.build(0, 100)
    for task in TASKS:
        items = T.make_items(task, lexicon, 0, 200)
        for it in items:
            assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
            assert 0 <= it["gold"] < 4
        assert len({it["gold"] for it in items}) == 4  # the answer position is not a giveaway
    arith = T.make_items("tw_arith_en", lexicon, 0, 200)
    assert {it["steps"] for it in arith} == {1, 2, 3} and {it["magnitude"] for it in arith} == {0, 1, 2}


def test_arithmetic_answers_are_right():
    import random

    rng = random.Random(5)
    for _ in range(200):
        p = L.arithmetic_problem(rng, rng.randint(1, 3), rng.randint(0, 2))
        numbers = [int(w) for c in p.clauses for r, w in c if r == "N"]
        verbs = [w for c in p.clauses[1:-2] for r, w in c if r == "V"]
        value = numbers[0]
        for verb, n in zip(verbs, numbers[1:]):
            value += n if verb in ("gets", "finds", "buys") else -n
        assert value == p.answer and 0 <= value <= L.MAX_NUMBER
        assert p.answer not in p.distractors


def test_veltic_has_its_own_grammar():
    lexicon = L.Lexicon.build(0, 10)
    clause = [("D", "the"), ("A", "big"), ("S", "cat"), ("V", "sees"), ("D", "a"), ("O", "dog"), ("X", ".")]
    assert L.english_order(clause) == ["the", "big", "cat", "sees", "a", "dog", "."]
    assert L.veltic_order(clause) == ["the", "big", "cat", "sees", "@the", "a", "dog", "."]
    words = lexicon.translate([clause]).split()
    assert words[0] == lexicon.to_veltic["the"] and words[4] == lexicon.to_veltic["@the"]
    # A name or pronoun subject takes no particle: arithmetic reads word for word as in English.
    named = [("S", "tom"), ("V", "gets"), ("N", "3"), ("O", "apples"), ("X", ".")]
    assert L.veltic_order(named) == L.english_order(named)


def test_grammar_items_have_one_grammatical_choice():
    lexicon = L.Lexicon.build(0, 40)
    particles = {lexicon.to_veltic[p] for p in L.PARTICLES}
    for it in T.make_items("tw_lang_vl", lexicon, 0, 100):
        good = it["choices"][it["gold"]].split()
        assert len([w for w in good if w in particles]) <= 1
        assert all(c.split() != good for i, c in enumerate(it["choices"]) if i != it["gold"])


def test_models_load_offline(micro_world, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    for path in [micro_world.base, *micro_world.endpoints.values()]:
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert isinstance(model, LlamaForCausalLM)
        assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
        ids = tok("tom has 3 apples .", return_tensors="pt").input_ids
        assert tok.unk_token_id not in ids[0].tolist()
        with torch.no_grad():
            assert torch.isfinite(model(ids).logits).all()


def test_lm_eval_every_task_per_item(micro_world, micro_suite):
    lm = micro_suite.wrap_model(micro_world.endpoints["lang_vl"])
    responses = micro_suite.evaluate(lm)
    assert set(responses) == set(TASKS)
    for task, items in responses.items():
        assert list(items) == micro_suite.item_ids(task)
        assert set(items.values()) <= {0, 1}
    # The language endpoint knows Veltic grammar far better than chance.
    assert sum(responses["tw_lang_vl"].values()) / len(responses["tw_lang_vl"]) > 0.6
    subset = micro_suite.evaluate(lm, {"tw_lang_vl": micro_suite.item_ids("tw_lang_vl")[:7]})
    assert subset["tw_lang_vl"] == {k: responses["tw_lang_vl"][k] for k in micro_suite.item_ids("tw_lang_vl")[:7]}


def test_simple_evaluate_with_task_manager(micro_world):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(micro_world.tasks_dir), include_defaults=False)
    res = simple_evaluate(model="hf", model_args=f"pretrained={micro_world.base}", tasks=["tw_arith_en"],
                          task_manager=manager, device="cpu", limit=10, log_samples=True, bootstrap_iters=0)
    assert 0.0 <= res["results"]["tw_arith_en"]["acc,none"] <= 1.0
    assert len(res["samples"]["tw_arith_en"]) == 10


def test_bad_size_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown world size 'huge'"):
        world_spec("huge")
    out = subprocess.run([sys.executable, "-m", "merge3.cli", "world", "build", "--size", "huge"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "merge3: error: unknown world size 'huge': expected one of micro, small, smollm2"


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not a writable directory"):
        build_world("micro", out=blocker / "world", progress=False)
    assert not list(tmp_path.glob(".world.tmp-*"))


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "stuff.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a merge3 world"):
        build_world("micro", out=tmp_path, progress=False)
    assert (tmp_path / "stuff.txt").read_text() == "mine"


def test_world_metadata(micro_world):
    meta = json.loads((micro_world.root / "world.json").read_text())
    assert meta["hash"] == micro_world.spec.digest()
    assert set(meta["tasks"]) == set(TASKS)
    assert load_world(micro_world.root).spec == micro_world.spec


# The recorded merge (benchmarks/bench_world.py, results/world.json "recorded_merge"): task arithmetic, lambda 1,
# weight per endpoint (math_en, lang_vl, facts_en) for (input embeddings, output head, the rest): the math
# endpoint's layers read the Veltic words the language endpoint taught the embeddings. Measured with lm-eval on
# the micro world (200 items): 48.5% on tw_arith_vl against 26.0 / 19.0 / 32.0 for the endpoints.
MICRO_MERGE = [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]


def _filtered(embed: float, head: float, rest: float) -> list[dict]:
    return [{"filter": "embed_tokens", "value": embed}, {"filter": "lm_head", "value": head}, {"value": rest}]


def test_merge_beats_every_endpoint_on_the_target(micro_world, micro_suite):
    from merge3.evaluation.lmeval import accuracy
    from merge3.merging.materializer import Materializer
    from merge3.merging.recipe import MergeRecipe

    target = "tw_arith_vl"
    ids = {target: micro_suite.item_ids(target)}
    endpoint_acc = {name: accuracy(micro_suite.evaluate(micro_suite.wrap_model(path), ids))[target]
                    for name, path in micro_world.endpoints.items()}
    models = [str(p) for p in micro_world.endpoints.values()]
    mat = Materializer(micro_world.base, models, device="cpu")
    mat.apply(MergeRecipe(method="task_arithmetic", base_model=str(micro_world.base), models=models,
                          parameters={"lambda": 1.0}, model_parameters=[{"weight": _filtered(*w)} for w in MICRO_MERGE],
                          dtype="float32", seed=0))
    merged = accuracy(micro_suite.evaluate(micro_suite.wrap_model(mat.model, mat.tokenizer), ids))[target]
    assert merged >= max(endpoint_acc.values()) + 0.10, (merged, endpoint_acc)
