"""The search space: merge parameters of N endpoint models as a flat vector in [0, 1]^dim (what pymoo sees).

A genome config::

    method: dare_ties
    parameters: {weight: [0.0, 1.0], density: [0.1, 1.0]}   # searched, with bounds
    fixed: {lambda: 1.0}                                       # global parameters, not searched
    layer_granularity: 0        # 0/None: one value for all layers; k: one value per block of k layers (k | L)
    filters: [self_attn, mlp]   # optional: separate values for tensors whose names contain each filter,
                                # plus one value for the rest

Per-model parameters (weight, density, gamma, epsilon) get one value per model; shared ones (lambda, t) one
value. Both are multiplied by filters (+ rest) and layer blocks; the rest gets one value for all layers.
Blocks become mergekit per-layer gradient lists of length L (value of layer i = value of its block), so the
recipe's YAML reproduces the merge in mergekit (non-layer tensors, e.g. embeddings, take block 0's value, as
mergekit evaluates gradients at t = 0 there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .merging.methods import PER_MODEL, get_method
from .merging.recipe import MergeRecipe, check_tokenizer_source, check_value

_KEYS = {"method", "parameters", "fixed", "layer_granularity", "filters", "tokenizer_source"}
_REST = "rest"


@dataclass
class _Gene:
    param: str
    model: int | None      # None: shared parameter
    filter: str | None     # None: no filters; "rest": tensors matching no filter
    block: int | None      # None: all layers
    lo: float
    hi: float


class Genome:
    def __init__(self, method: str, bounds: dict, fixed: dict, n_models: int, n_layers: int,
                 layer_granularity: int = 0, filters: list[str] | None = None, tokenizer_source: str | None = None):
        self.method, self.bounds, self.fixed = method, bounds, fixed
        self.tokenizer_source = tokenizer_source  # copied into every recipe: not searched
        self.n_models, self.n_layers = n_models, n_layers
        self.layer_granularity = layer_granularity or 0
        self.filters = list(filters or [])
        self.spec = get_method(method)
        self.n_blocks = n_layers // self.layer_granularity if self.layer_granularity else 1
        self.genes: list[_Gene] = []
        for name, (lo, hi) in bounds.items():
            models = range(n_models) if self.spec.param(name).scope == PER_MODEL else [None]
            for m in models:
                if self.filters:
                    for f in self.filters:
                        for b in self._blocks():
                            self.genes.append(_Gene(name, m, f, b, lo, hi))
                    self.genes.append(_Gene(name, m, _REST, None, lo, hi))
                else:
                    for b in self._blocks():
                        self.genes.append(_Gene(name, m, None, b, lo, hi))

    def _blocks(self):
        return range(self.n_blocks) if self.layer_granularity else [None]

    @property
    def dim(self) -> int:
        return len(self.genes)

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict, n_models: int, n_layers: int) -> "Genome":
        if not isinstance(cfg, dict):
            raise ValueError("genome config must be a mapping (method, parameters, fixed, layer_granularity, filters)")
        unknown = set(cfg) - _KEYS
        if unknown:
            raise ValueError(f"genome: unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_KEYS))}")
        if "method" not in cfg:
            raise ValueError("genome: missing key 'method'")
        try:
            spec = get_method(cfg["method"])
        except ValueError as exc:
            raise ValueError(f"genome.method: {exc}") from None
        if not isinstance(n_models, int) or n_models < 1:
            raise ValueError(f"genome: n_models must be a positive integer, got {n_models!r}")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"genome: n_layers must be a positive integer, got {n_layers!r}")
        bounds = {}
        for name, b in (cfg.get("parameters") or {}).items():
            p = spec.param(name)
            if p is None:
                raise ValueError(f"genome.parameters.{name}: not a parameter of {spec.name} "
                                 f"(expected {', '.join(spec.names)})")
            if p.kind is not float:
                raise ValueError(f"genome.parameters.{name}: only numeric parameters are searched; put it under fixed")
            if not (isinstance(b, (list, tuple)) and len(b) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
                raise ValueError(f"genome.parameters.{name}: bounds must be [low, high], got {b!r}")
            lo, hi = float(b[0]), float(b[1])
            if lo > hi:
                raise ValueError(f"genome.parameters.{name}: low {lo:g} is above high {hi:g}")
            for v in (lo, hi):
                check_value(p, v, f"genome.parameters.{name}")
            bounds[name] = (lo, hi)
        fixed = dict(cfg.get("fixed") or {})
        for name, v in fixed.items():
            p = spec.param(name)
            if p is None:
                raise ValueError(f"genome.fixed.{name}: not a parameter of {spec.name} (expected {', '.join(spec.names)})")
            if name in bounds:
                raise ValueError(f"genome.fixed.{name}: also listed under parameters")
            check_value(p, v, f"genome.fixed.{name}")
        for p in spec.params:
            if p.required and p.name not in bounds and p.name not in fixed:
                raise ValueError(f"genome.parameters.{p.name}: {spec.name} needs {p.name} (search it or fix it)")
        if spec.max_models is not None and n_models > spec.max_models or n_models < spec.min_models:
            raise ValueError(f"genome: {spec.name} cannot merge {n_models} model(s)")
        g = cfg.get("layer_granularity") or 0
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise ValueError(f"genome.layer_granularity must be a non-negative integer, got {g!r}")
        if g and n_layers % g:
            raise ValueError(f"genome.layer_granularity {g} does not divide the layer count {n_layers}")
        filters = cfg.get("filters") or []
        if not isinstance(filters, list) or not all(isinstance(f, str) and f and f != _REST for f in filters) \
                or len(set(filters)) != len(filters):
            raise ValueError(f"genome.filters must be a list of distinct non-empty tensor-name substrings, got {filters!r}")
        if not bounds:
            raise ValueError("genome.parameters: nothing to search")
        ts = cfg.get("tokenizer_source")
        check_tokenizer_source(ts, "genome.tokenizer_source")
        return cls(spec.name, bounds, fixed, n_models, n_layers, g, filters, ts)

    # ---- naming ------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        out = []
        for g in self.genes:
            parts = [g.param]
            if g.model is not None:
                parts.append(f"m{g.model}")
            if g.filter is not None:
                parts.append(g.filter)
            if g.block is not None:
                k = self.layer_granularity
                parts.append(f"L{g.block * k}-{g.block * k + k - 1}")
            out.append(".".join(parts))
        return out

    # ---- decode / encode -----------------------------------------------------------------------------------
    def _values(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float).reshape(-1)
        if x.shape[0] != self.dim:
            raise ValueError(f"genome vector has {x.shape[0]} entries, expected {self.dim}")
        if not np.all(np.isfinite(x)):
            raise ValueError("genome vector has non-finite entries")
        x = np.clip(x, 0.0, 1.0)
        lo = np.array([g.lo for g in self.genes])
        hi = np.array([g.hi for g in self.genes])
        return lo + x * (hi - lo)

    def decode(self, x: np.ndarray, base: str, models: list[str], seed: int | None = None) -> MergeRecipe:
        if len(models) != self.n_models:
            raise ValueError(f"genome was built for {self.n_models} models, got {len(models)}")
        vals = self._values(x)
        settings: dict = {}   # (param, model) -> {filter: {block: value}}
        for g, v in zip(self.genes, vals):
            settings.setdefault((g.param, g.model), {}).setdefault(g.filter, {})[g.block] = round(float(v), 10)
        shared = dict(self.fixed)
        per_model = [{} for _ in models]
        for (param, m), by_filter in settings.items():
            setting = self._setting(by_filter)
            if m is None:
                shared[param] = setting
            else:
                per_model[m][param] = setting
        if self.spec.sparsify == "della":
            self._clamp_epsilon(per_model, shared)
        return MergeRecipe(method=self.method, base_model=str(base), models=[str(m) for m in models],
                           parameters=shared, model_parameters=per_model, seed=seed,
                           tokenizer_source=self.tokenizer_source)

    def _setting(self, by_filter: dict):
        def blocks(by_block: dict):
            if None in by_block:
                return by_block[None]
            k = self.layer_granularity
            return [by_block[i // k] for i in range(self.n_layers)]
        if list(by_filter) == [None]:
            return blocks(by_filter[None])
        out = [{"filter": f, "value": blocks(by_filter[f])} for f in self.filters]
        out.append({"value": blocks(by_filter[_REST])})
        return out

    def _clamp_epsilon(self, per_model: list[dict], shared: dict) -> None:
        """DELLA needs density +/- epsilon inside (0, 1): shrink a searched scalar epsilon to fit."""
        for p in per_model:
            d = p.get("density", shared.get("density", 1.0))
            e = p.get("epsilon", shared.get("epsilon", 0.15))
            if isinstance(d, float) and isinstance(e, float) and 0 < d < 1:
                limit = min(d, 1 - d) * 0.999
                if e >= limit:
                    p["epsilon"] = round(limit, 10)

    def encode(self, recipe: MergeRecipe) -> np.ndarray:
        """The vector that decodes to ``recipe`` (for recipes of this genome's shape)."""
        if recipe.method != self.method or len(recipe.models) != self.n_models:
            raise ValueError("recipe does not have this genome's method and number of models")
        x = np.zeros(self.dim)
        for i, g in enumerate(self.genes):
            src = recipe.parameters if g.model is None else recipe.model_parameters[g.model]
            if g.param not in src:
                raise ValueError(f"recipe has no {g.param} for {'parameters' if g.model is None else f'model {g.model}'}")
            v = self._read(src[g.param], g)
            x[i] = 0.0 if g.hi == g.lo else (v - g.lo) / (g.hi - g.lo)
        return np.clip(x, 0.0, 1.0)

    def _read(self, setting, g: _Gene) -> float:
        if g.filter is not None:
            if not isinstance(setting, list) or not all(isinstance(e, dict) for e in setting):
                raise ValueError(f"recipe's {g.param} is not in filter form")
            want = None if g.filter == _REST else g.filter
            entry = next((e for e in setting if e.get("filter") == want), None)
            if entry is None:
                raise ValueError(f"recipe's {g.param} has no entry for filter {g.filter}")
            setting = entry["value"]
        if g.block is None:
            if isinstance(setting, list):
                raise ValueError(f"recipe's {g.param} is a list where this genome has one value")
            return float(setting)
        if not isinstance(setting, list) or len(setting) != self.n_layers:
            raise ValueError(f"recipe's {g.param} is not a per-layer list of length {self.n_layers}")
        return float(setting[g.block * self.layer_granularity])


def n_layers_of(base: str) -> int:
    """Number of transformer layers of a Hugging Face model folder (from its config.json)."""
    path = Path(base) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the model config ({exc})") from None
    for source in (cfg, cfg.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in source:
                return int(source[key])
    raise ValueError(f"{path}: cannot tell the number of layers")
