"""Writes candidates' merged weights into one live transformers model, in place.

The base and the task vectors (delta_i = theta_i - theta_base) are loaded once and kept resident; ``apply``
then costs one pass of arithmetic over them and writes straight into the model's parameters: no disk I/O, no
new model object per candidate.

Memory (P parameters, N endpoints, storage dtype of b bytes, e.g. b = 2 for bf16):
  on the device: live model P*b + resident base P*b + task vectors N*P*b, plus float32 scratch for the largest
  tensor times about N + 3 (the TIES family; linear/task_arithmetic need one tensor) and, when cached
  (``rank_cache``), per-row DELLA ranks N*P*4 bytes (float32, normalized) once a DELLA recipe is applied,
  magnitude ranks N*P*4 bytes (int32) once a TIES / breadcrumbs recipe is; uncached, they are recomputed per
  candidate.
  7B endpoints in bf16 (P = 6.7e9, N = 3): 13.5 GB each, so 2*13.5 + 3*13.5 = 67 GB on the GPU, plus
  ~2.5 GB scratch (the 131M-entry embedding, float32, 5 copies).
  ``offload_task_vectors=True`` keeps the task vectors in pinned CPU memory (N*P*b of host RAM, 40 GB here)
  and streams each tensor's slices to the GPU when it is merged: 27 GB on the GPU, at the price of host-to-
  device bandwidth (about N*P*b / 25 GB/s, ~1.6 s per candidate for 7B on PCIe 4).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .checks import assert_finite, check_compatible
from .kernels import Workspace, merge_tensor
from .recipe import MergeRecipe
from .sparsify import della_ranks, magnitude_order, outlier_order
from .vocab import Vocabulary, check_rows, participants

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: expected float32, float16 or bfloat16") from None


# "auto" caches ranks only when they take at most this share of the memory left: the rest stays free for the
# merge's scratch and the evaluation's activations (7B on a 141 GB GPU with offloaded task vectors: 80 GB of
# magnitude ranks in ~110 GB left, cached; on an 80 GB GPU, ~10 GB left: recomputed).
RANK_CACHE_SHARE = 0.75


def check_rank_cache(value):
    """``value`` if it is auto, True or False (not 0 / 1), else a one-line ValueError."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"rank_cache: expected auto, True or False, got {value!r}")


def available_bytes(device) -> int | None:
    """Memory left on ``device`` (None: unknown): free GPU memory plus what torch holds unused; on CPU the
    kernel's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _host_available()
    return None


def _host_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def rank_bytes(t: torch.Tensor) -> int:
    """Bytes of the cached ranks of one task vector: 4 per entry (int32 magnitude ranks, float32 DELLA ranks)."""
    return t.numel() * 4


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


class Materializer:
    def __init__(self, base: str | Path, models: list[str | Path], device: str | None = None,
                 dtype: str | torch.dtype | None = None, offload_task_vectors: bool = False,
                 check_finite: bool = True, fused: bool | None = None, rank_cache: str | bool = "auto",
                 tokenizer_source: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Magnitude / DELLA ranks: cached (fast, N*P*4 or N*P*2 bytes), recomputed per candidate (same bits), or
        # "auto": cached when they fit in the memory left (decided once per kind, on its first recipe).
        self.rank_cache = check_rank_cache(rank_cache)
        self._caching: dict[str, bool] = {}
        self.base_path = str(base)
        self.models = [str(m) for m in models]
        self.tokenizer_source = tokenizer_source
        # With a tokenizer_source the resident base and task vectors hold token rows on the output vocabulary's
        # ids, laid out once here for every recipe: the participants are the models and the base, the base's
        # rows filling gaps first, as in a recipe that names its base_model (checked by _check_recipe).
        self.vocab = None
        if tokenizer_source is not None:
            ends = self.models + ([] if any(_same(m, base) for m in self.models) else [self.base_path])
            self.vocab = Vocabulary.build(tokenizer_source, self.base_path, ends, self.base_path)
        ckpts = check_compatible(base, models, vocab_tensors=self.vocab.tensors if self.vocab else frozenset())
        if self.vocab is not None:
            check_rows(self.vocab, ckpts)
        base_ckpt = ckpts[0]
        self.names = base_ckpt.names
        self.n_layers = base_ckpt.n_layers
        stored = {m[1] for m in base_ckpt.meta.values() if m[1] in _DTYPES}
        self.dtype = resolve_dtype(dtype) or (_DTYPES[stored.pop()] if len(stored) == 1 else torch.float32)
        self.offload = bool(offload_task_vectors) and self.device.type == "cuda"
        # Fused kernels (one compiled pass per tensor) by default on GPUs; on CPU they pay off over a search's many
        # candidates but cost a compile per method at the start, so they are asked for.
        from .fused import use_fused

        self.fused = use_fused(fused, self.device)

        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=self.dtype, use_safetensors=True,
                                                          trust_remote_code=False).to(self.device).eval()
        if self.vocab is not None:
            self.tokenizer = self.vocab.tokenizer
            if self.model.get_input_embeddings().weight.shape[0] != self.vocab.size:
                # new rows are overwritten by every candidate; a tied head follows the embedding
                self.model.resize_token_embeddings(self.vocab.size, mean_resizing=False)
        else:
            # Weights-only folders (e.g. synthetic benchmark models) have no tokenizer: None then.
            has_tok = any((Path(base) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                 "tokenizer.model"))
            self.tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False) if has_tok else None
        targets = dict(self.model.named_parameters())
        targets.update(dict(self.model.named_buffers()))
        missing = [n for n in self.names if n not in targets]
        if missing:
            raise ValueError(f"{base}: tensor {missing[0]} has no parameter in the loaded model")
        self._targets = {n: targets[n] for n in self.names}

        # Resident copies: the base (the live model is overwritten by every candidate) and the task vectors.
        self._base: dict[str, torch.Tensor] = {}
        self._tv: dict[str, list] = {}   # model path -> per-name task vectors (None for the base itself)
        others = {str(m): c for m, c in zip([m for m in self.models if not _same(m, base)], ckpts[1:])}
        aligned = self._aligned(base_ckpt, others)
        for name in self.names:
            b = aligned[name][self.base_path] if name in aligned else base_ckpt.get(name)
            if check_finite:
                assert_finite(b, f"{base}: tensor {name}")
            self._base[name] = b.to(device=self.device, dtype=self._store_dtype(b))
        for m in self.models:
            if _same(m, base):
                self._tv[m] = None
                continue
            ck, tvs = others[m], {}
            for name in self.names:
                x = aligned[name][m] if name in aligned else ck.get(name)
                if check_finite:
                    assert_finite(x, f"{m}: tensor {name}")
                b = aligned[name][self.base_path] if name in aligned else base_ckpt.get(name)
                d = (x.to(torch.float32) - b.to(torch.float32)) if x.is_floating_point() else x
                d = d.to(self._store_dtype(x))
                tvs[name] = d.pin_memory() if self.offload else d.to(self.device)
            self._tv[m] = tvs
            ck.close()
        base_ckpt.close()
        self._plans: dict = {}
        self._ranks: dict = {}   # (sparsifier, id(task vector)) -> its cached ranks
        self._work = Workspace()

    def _aligned(self, base_ckpt, others: dict) -> dict[str, dict[str, torch.Tensor]]:
        """Token-indexed tensor name -> participant -> its rows on the output vocabulary (empty without one)."""
        if self.vocab is None:
            return {}
        ckpt = {m: (base_ckpt if _same(m, self.base_path) else others[m]) for m in self.vocab.models}
        out = {}
        for name in self.names:
            if name in self.vocab.tensors:
                rows = self.vocab.align(name, {m: c.get(name) for m, c in ckpt.items()})
                out[name] = {(self.base_path if _same(m, self.base_path) else m): t for m, t in rows.items()}
        return out

    def _store_dtype(self, t: torch.Tensor) -> torch.dtype:
        return self.dtype if t.is_floating_point() else t.dtype

    # ------------------------------------------------------------------------------------------------------
    def _check_recipe(self, recipe: MergeRecipe) -> None:
        recipe.validate()
        ok = len(recipe.models) == len(self.models) and all(_same(a, b) for a, b in zip(recipe.models, self.models))
        if not ok:
            raise ValueError(f"recipe models {recipe.models} are not the materializer's {self.models} (same order)")
        if recipe.base_model and not _same(recipe.base_model, self.base_path):
            raise ValueError(f"recipe base_model {recipe.base_model} is not the materializer's base {self.base_path}")
        if recipe.tokenizer_source != self.tokenizer_source:
            raise ValueError(f"recipe tokenizer_source {recipe.tokenizer_source!r} is not the materializer's "
                             f"{self.tokenizer_source!r} (the vocabulary is laid out when it is built)")
        if self.vocab is not None:
            _, ends, prefer = participants(recipe)
            if prefer is None or {str(Path(m).resolve()) for m in ends} != {str(Path(m).resolve())
                                                                         for m in self.vocab.models}:
                raise ValueError("with a tokenizer_source the materializer merges recipes that name their "
                                 "base_model (a linear recipe without one aligns vocabularies differently)")

    def _plan(self, recipe: MergeRecipe) -> list:
        """Per-tensor resolved parameters, computed (and checked) for every tensor before any arithmetic."""
        import json

        key = json.dumps(recipe.to_dict(), sort_keys=True, default=str)
        plan = self._plans.get(key)
        if plan is None:
            plan = [(name, *recipe.resolve(name, self.n_layers)) for name in self.names]
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _sources(self, recipe: MergeRecipe) -> list:
        """Per input of the recipe: its task-vector dict (None for the base), resolved once per apply."""
        out = []
        for path, _ in recipe.inputs():
            key = next((m for m in self.models if _same(m, path)), None)
            out.append(self._tv.get(key) if key is not None else None)
        return out

    _RANKERS = {"della": della_ranks, "magnitude": magnitude_order, "magnitude_outliers": outlier_order}

    def _uses_cache(self, kind: str, deltas: list) -> bool:
        """Whether ``kind``'s ranks are cached: the setting, or under "auto" whether this recipe's ranks take at
        most RANK_CACHE_SHARE of the memory left on the device (decided once per kind; a warning when not)."""
        if self.rank_cache != "auto":
            return self.rank_cache
        if kind not in self._caching:
            needed = sum(rank_bytes(d) for d in deltas if d is not None and (kind, id(d)) not in self._ranks)
            free = available_bytes(self.device)
            self._caching[kind] = free is None or needed <= RANK_CACHE_SHARE * free
            if not self._caching[kind]:
                warnings.warn(f"{kind} rank cache off: it needs {needed / 2**30:.2f} GiB, {free / 2**30:.2f} GiB "
                              f"left on {self.device}; ranks are recomputed per candidate (same results, slower; "
                              f"rank_cache=True forces the cache)", stacklevel=3)
        return self._caching[kind]

    def caches_ranks(self, recipe: MergeRecipe) -> bool | None:
        """Whether ``apply(recipe)`` uses cached ranks (None: the method ranks nothing); decides "auto"."""
        kind = recipe.spec.sparsify
        if kind not in self._RANKERS:
            return None
        return self._uses_cache(kind, [d for tvs in self._sources(recipe) if tvs for d in tvs.values()])

    def _cached_ranks(self, kind: str, deltas: list) -> list:
        """Per input, the sparsifier's density-independent ranks of its task vector, computed on first use:
        magnitude selection then costs one comparison per entry instead of a selection (or a sort) per candidate."""
        ranker = self._RANKERS[kind]
        ranks = []
        for d in deltas:
            if d is None:
                ranks.append(None)
                continue
            k = (kind, id(d))  # one task-vector tensor per (model, name), alive as long as the materializer
            if k not in self._ranks:
                self._ranks[k] = ranker(d.to(device=self.device, dtype=torch.float32))
            ranks.append(self._ranks[k])
        return ranks

    @torch.no_grad()
    def apply(self, recipe: MergeRecipe):
        """Writes the recipe's merge into ``self.model`` in place and returns the model."""
        self._check_recipe(recipe)
        spec = recipe.spec
        plan = self._plan(recipe)
        sources = self._sources(recipe)
        cached = self.caches_ranks(recipe)
        for name, shared, per_model in plan:
            deltas = [None if tvs is None else tvs[name] for tvs in sources]
            ranks = self._cached_ranks(spec.sparsify, deltas) if cached else None
            merge_tensor(spec, name, self._base[name], deltas, shared, per_model, seed=recipe.seed,
                         out=self._targets[name].data, ranks=ranks, work=self._work, fused=self.fused)
        return self.model

    @torch.no_grad()
    def restore_base(self):
        for name, t in self._base.items():
            self._targets[name].data.copy_(t)
        return self.model

    @torch.no_grad()
    def nonfinite(self) -> list[str]:
        """Names of the live model's tensors holding NaN or infinite values (after an extreme recipe)."""
        return [name for name, t in self._targets.items() if not bool(torch.isfinite(t.data).all())]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The live model's current tensors under the checkpoint's names (what export writes)."""
        return {name: t.data for name, t in self._targets.items()}

    def memory_bytes(self) -> dict[str, int]:
        def size(ts):
            return sum(t.numel() * t.element_size() for t in ts if t is not None)
        tv = sum(size(v.values()) for v in self._tv.values() if v)
        return {"model": size(self._targets.values()), "base": size(self._base.values()), "task_vectors": tv,
                "della_ranks": size(v for k, v in self._ranks.items() if k[0] == "della"),
                "magnitude_ranks": size(v for k, v in self._ranks.items() if k[0] != "della"),
                "scratch": self._work.nbytes()}
