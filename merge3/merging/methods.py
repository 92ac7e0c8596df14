"""The merge methods' specifications: parameter names, scopes, defaults and ranges (mergekit 0.1.5 semantics).

Only the table lives here; the arithmetic is in ``kernels`` and ``sparsify``. Keeping the table apart lets the
recipe, the genome and the YAML reader validate parameters without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHARED, PER_MODEL = "shared", "per_model"


@dataclass(frozen=True)
class Param:
    name: str
    kind: type                       # float or bool
    scope: str                       # SHARED (one value) or PER_MODEL (one per non-base model)
    default: object = None           # None: required
    lo: float | None = None          # inclusive range for floats (None: unbounded)
    hi: float | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: tuple[Param, ...]
    sparsify: str | None = None      # magnitude | random | magnitude_outliers | della
    consensus: bool = False          # sign consensus (TIES family)
    random: bool = False             # needs a seed to be reproducible
    min_models: int = 1              # non-base models
    max_models: int | None = None
    needs_base: bool = True
    extra: dict = field(default_factory=dict)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]


def _gta(name, sparsify=None, consensus=False, normalize=False, rescale=False) -> MethodSpec:
    params = [
        Param("int8_mask", bool, SHARED, False),
        Param("normalize", bool, SHARED, normalize),
        Param("rescale", bool, SHARED, rescale),
        Param("lambda", float, SHARED, 1.0),
        Param("weight", float, PER_MODEL, None),
        Param("density", float, PER_MODEL, 1.0, 0.0, 1.0),
    ]
    if sparsify == "magnitude_outliers":
        params.append(Param("gamma", float, PER_MODEL, 0.01, 0.0, 1.0))
    if sparsify == "della":
        params.append(Param("epsilon", float, PER_MODEL, 0.15, 0.0, 1.0))
    if consensus:
        # An extension: mergekit 0.1.5 always takes the majority sign by sum; "count" is merge3-only.
        params.append(Param("consensus_method", str, SHARED, "sum"))
    return MethodSpec(name, tuple(params), sparsify=sparsify, consensus=consensus,
                      random=sparsify in ("random", "della"))


METHODS: dict[str, MethodSpec] = {m.name: m for m in [
    MethodSpec("linear", (Param("weight", float, PER_MODEL, None), Param("normalize", bool, SHARED, True)),
               needs_base=False),
    _gta("task_arithmetic"),
    _gta("ties", "magnitude", consensus=True, normalize=True),
    _gta("dare_ties", "random", consensus=True, rescale=True),
    _gta("dare_linear", "random", rescale=True),
    _gta("breadcrumbs", "magnitude_outliers"),
    _gta("breadcrumbs_ties", "magnitude_outliers", consensus=True),
    _gta("della", "della", consensus=True, normalize=True, rescale=True),
    _gta("della_linear", "della", rescale=True),
    MethodSpec("slerp", (Param("t", float, SHARED, None, 0.0, 1.0),), min_models=1, max_models=1),
    MethodSpec("model_stock", (Param("filter_wise", bool, SHARED, False),), min_models=2),
]}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}: expected one of {', '.join(METHODS)}") from None
