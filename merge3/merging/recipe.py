"""A merge recipe: method, models and parameters, read from and written to mergekit-style YAML.

Parameter values follow mergekit 0.1.5: a scalar; a list of numbers (a gradient across layers: layer i of L
sees position t = i/(L-1), tensors outside the layers see t = 0); or a filter list
``[{filter: self_attn, value: ...}, {value: ...}]`` where the first entry whose filter is a substring of the
tensor name (or has no filter) applies. Per-model values take precedence over global ``parameters``, which
take precedence over the method's defaults.
"""

from __future__ import annotations

from ..yamlfile import read_yaml_mapping

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .methods import PER_MODEL, SHARED, MethodSpec, Param, get_method

DTYPES = ("float32", "float16", "bfloat16")
_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "merge3_seed", "tokenizer_source"}
_IGNORED_KEYS = {"out_dtype"}
# mergekit's tokenizer_source values merge3 builds (a model path as the source is not supported): see vocab.py
TOKENIZER_SOURCES = ("base", "union")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    m = _LAYER.search(tensor_name)
    return int(m.group(1)) if m else None


def layer_position(tensor_name: str, n_layers: int) -> float:
    """mergekit's gradient position: i/(L-1) inside layer i (1 for a single layer), 0 outside the layers."""
    i = layer_index(tensor_name)
    if i is None:
        return 0.0
    return i / (n_layers - 1) if n_layers > 1 else 1.0


def _is_scalar(v) -> bool:
    return isinstance(v, (bool, int, float, str))


def evaluate_setting(setting, tensor_name: str, t: float, kind: type):
    """The value a setting takes for one tensor at gradient position t (None when no filter matches)."""
    if isinstance(setting, dict):
        setting = [setting]
    if _is_scalar(setting):
        return _coerce(setting, kind)
    if not isinstance(setting, list) or not setting:
        return None
    if all(_is_scalar(v) for v in setting):
        values = [_coerce(v, kind) for v in setting]
        if kind is not float:  # booleans and strings pick a discrete entry
            return values[int(t * (len(values) - 1))]
        pos = t * (len(values) - 1)
        i0 = int(pos)
        i1 = min(len(values) - 1, i0 + 1)
        frac = pos - i0
        return (1 - frac) * values[i0] + frac * values[i1]
    for cond in setting:
        flt = cond.get("filter")
        if flt is None or flt == "*" or (tensor_name and flt in tensor_name):
            return evaluate_setting(cond["value"], tensor_name, t, kind)
    return None


def _coerce(v, kind: type):
    if kind is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        raise ValueError(f"expected a boolean, got {v!r}")
    if kind is float:
        if isinstance(v, bool):
            raise ValueError(f"expected a number, got {v!r}")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {v!r}") from None
    return str(v)


def _leaves(setting):
    """Every scalar a setting can contribute (gradient endpoints, filter values)."""
    if isinstance(setting, dict):
        if "value" not in setting:
            raise ValueError(f"filter entry {setting!r} has no 'value'")
        unknown = set(setting) - {"filter", "value"}
        if unknown:
            raise ValueError(f"filter entry has unknown key(s) {sorted(unknown)}")
        yield from _leaves(setting["value"])
    elif isinstance(setting, list):
        if not setting:
            raise ValueError("empty list")
        for v in setting:
            yield from _leaves(v)
    elif _is_scalar(setting):
        yield setting
    else:
        raise ValueError(f"unexpected value {setting!r}")


FLOAT32_MAX = 3.4028234663852886e38


def check_value(p: Param, value, where: str) -> None:
    """Type and range of one resolved (or leaf) value; one-line ValueError."""
    try:
        v = _coerce(value, p.kind)
    except ValueError as exc:
        raise ValueError(f"{where}: {p.name} {exc}") from None
    if p.kind is float:
        if not math.isfinite(v) or abs(v) > FLOAT32_MAX:  # the kernels compute in float32
            raise ValueError(f"{where}: {p.name} must be a finite float32 value, got {value!r}")
        if (p.lo is not None and v < p.lo) or (p.hi is not None and v > p.hi):
            raise ValueError(f"{where}: {p.name}={v:g} out of range [{p.lo:g}, {p.hi:g}]")
    if p.name == "consensus_method" and v not in ("sum", "count"):
        raise ValueError(f"{where}: consensus_method must be 'sum' or 'count', got {value!r}")


def check_tokenizer_source(value, where: str) -> None:
    """None, base or union; one-line ValueError naming ``where`` otherwise."""
    if value is not None and value not in TOKENIZER_SOURCES:
        raise ValueError(f"{where}: expected base or union (or no key: the base's vocabulary shared by every "
                         f"model), got {value!r}; a model path as the tokenizer source is not supported")


@dataclass
class MergeRecipe:
    method: str
    base_model: str
    models: list[str]
    parameters: dict = field(default_factory=dict)
    model_parameters: list[dict] = field(default_factory=list)
    dtype: str = "float32"
    seed: int | None = None
    tokenizer_source: str | None = None  # None: every model must share the base's vocabulary (vocab.py)

    def __post_init__(self):
        self.base_model = str(self.base_model) if self.base_model else ""
        self.models = [str(m) for m in self.models]
        self.parameters = dict(self.parameters or {})
        if not self.model_parameters:
            self.model_parameters = [{} for _ in self.models]
        self.model_parameters = [dict(p or {}) for p in self.model_parameters]

    # ---- structure -------------------------------------------------------------------------------------
    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)

    def inputs(self) -> list[tuple[str, dict]]:
        """(path, per-model settings) of the models merged onto the base, in order (the base itself excluded).

        For linear the base is an input only as mergekit makes it one: listed in models, or (when absent from
        models) given a global weight.
        """
        out = [(m, p) for m, p in zip(self.models, self.model_parameters) if m != self.base_model]
        if self.method == "linear":
            if self.base_model in self.models:
                i = self.models.index(self.base_model)
                out = [(m, p) for m, p in zip(self.models, self.model_parameters)]
                out[i] = (self.base_model, self.model_parameters[i])
            elif self.base_model and "weight" in self.parameters:
                out = out + [(self.base_model, {})]
        return out

    def validate(self) -> "MergeRecipe":
        spec = self.spec  # unknown method -> ValueError
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if spec.needs_base and not self.base_model:
            raise ValueError(f"{self.method} needs a base_model")
        if not self.models:
            raise ValueError("recipe has no models")
        if len(self.model_parameters) != len(self.models):
            raise ValueError(f"model_parameters has {len(self.model_parameters)} entries for {len(self.models)} models")
        if len(set(self.models)) != len(self.models):
            raise ValueError("a model is listed twice in models")
        n = len([m for m in self.models if m != self.base_model]) if self.method != "linear" else len(self.models)
        if n < spec.min_models or (spec.max_models is not None and n > spec.max_models):
            want = (f"exactly {spec.min_models}" if spec.min_models == spec.max_models
                    else f"at least {spec.min_models}")
            raise ValueError(f"{self.method} merges {want} model(s) besides the base, got {n}")
        for key, setting in self.parameters.items():
            p = spec.param(key)
            if p is None:
                raise ValueError(f"unknown parameter {key!r} for {self.method}: expected {', '.join(spec.names)}")
            self._check_setting(p, setting, "parameters")
        for m, params in zip(self.models, self.model_parameters):
            for key, setting in params.items():
                p = spec.param(key)
                if p is None or p.scope != PER_MODEL:
                    per = [q.name for q in spec.params if q.scope == PER_MODEL]
                    raise ValueError(f"unknown per-model parameter {key!r} for {self.method} ({m}): "
                                     f"expected {', '.join(per) or 'none'}")
                self._check_setting(p, setting, f"model {m}")
        for p in spec.params:
            if not p.required:
                continue
            if p.scope == SHARED and p.name not in self.parameters:
                raise ValueError(f"{self.method} needs parameters.{p.name}")
            if p.scope == PER_MODEL:
                for m, params in self.inputs():
                    if p.name not in params and p.name not in self.parameters:
                        raise ValueError(f"{self.method} needs {p.name} for model {m}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        check_tokenizer_source(self.tokenizer_source, "tokenizer_source")
        return self

    def _check_setting(self, p: Param, setting, where: str) -> None:
        try:
            leaves = list(_leaves(setting))
        except ValueError as exc:
            raise ValueError(f"{where}: {p.name}: {exc}") from None
        for leaf in leaves:
            check_value(p, leaf, where)

    # ---- per-tensor resolution -----------------------------------------------------------------------
    def resolve(self, tensor_name: str, n_layers: int) -> tuple[dict, list[dict]]:
        """(shared values, one dict per input of ``inputs()``) for one tensor, defaults filled in and checked."""
        spec = self.spec
        t = layer_position(tensor_name, n_layers)
        shared = {}
        for p in spec.params:
            if p.scope == SHARED:
                shared[p.name] = self._resolve_one(p, [self.parameters], tensor_name, t, "parameters")
        per_model = []
        for m, params in self.inputs():
            per_model.append({p.name: self._resolve_one(p, [params, self.parameters], tensor_name, t, m)
                              for p in spec.params if p.scope == PER_MODEL})
        if spec.sparsify == "della":
            for m, vals in zip([m for m, _ in self.inputs()], per_model):
                d, e = vals["density"], vals["epsilon"]
                if 0 < d < 1 and (d + e >= 1 or d - e <= 0):
                    raise ValueError(f"model {m}, {tensor_name}: della needs density +/- epsilon inside (0, 1), "
                                     f"got density={d:g}, epsilon={e:g}")
        return shared, per_model

    def _resolve_one(self, p: Param, scopes: list[dict], tensor_name: str, t: float, where: str):
        for scope in scopes:
            if p.name in scope:
                v = evaluate_setting(scope[p.name], tensor_name, t, p.kind)
                if v is not None:
                    check_value(p, v, f"{where}, {tensor_name}")
                    return v
        if p.required:
            raise ValueError(f"{self.method}: no value of {p.name} for {where} at {tensor_name}")
        return p.default

    # ---- serialization --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The mergekit configuration (plus ``merge3_seed`` for random methods, which mergekit ignores)."""
        d: dict = {"merge_method": self.method}
        base_in_yaml = bool(self.base_model)
        if self.method == "linear" and self.base_model not in self.models and "weight" not in self.parameters:
            base_in_yaml = False  # mergekit would merge the base in as well, with no weight to give it
        if base_in_yaml:
            d["base_model"] = self.base_model
        models = []
        for m, params in zip(self.models, self.model_parameters):
            entry: dict = {"model": m}
            if params:
                entry["parameters"] = _plain(params)
            models.append(entry)
        d["models"] = models
        if self.parameters:
            d["parameters"] = _plain(self.parameters)
        d["dtype"] = self.dtype
        if self.tokenizer_source is not None:
            d["tokenizer_source"] = self.tokenizer_source
        if self.seed is not None:
            d["merge3_seed"] = int(self.seed)
        return d

    def to_mergekit_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, d: dict, root: str | Path | None = None) -> "MergeRecipe":
        """A recipe from a mergekit-style dict; relative model paths are taken relative to ``root`` if given."""
        if not isinstance(d, dict):
            raise ValueError("a recipe must be a mapping with models, base_model, merge_method, parameters, dtype")
        for key in ("slices", "modules"):
            if key in d:
                raise ValueError(f"recipe key {key!r} is not supported: list the models under 'models'")
        unknown = set(d) - _TOP_KEYS - _IGNORED_KEYS - {"seed"}
        if unknown:
            raise ValueError(f"unknown recipe key(s): {', '.join(sorted(unknown))}")
        if "merge_method" not in d:
            raise ValueError("recipe has no merge_method")
        get_method(d["merge_method"])

        def path(p) -> str:
            p = str(p)
            if root is not None and not Path(p).is_absolute():
                cand = Path(root) / p
                if cand.exists() or not Path(p).exists():
                    return str(cand)
            return p

        models, mparams = [], []
        for entry in d.get("models") or []:
            if isinstance(entry, str):
                entry = {"model": entry}
            if not isinstance(entry, dict) or "model" not in entry:
                raise ValueError(f"each entry of models needs a 'model' key, got {entry!r}")
            extra = set(entry) - {"model", "parameters"}
            if extra:
                raise ValueError(f"unknown key(s) in models entry: {', '.join(sorted(extra))}")
            models.append(path(entry["model"]))
            mparams.append(dict(entry.get("parameters") or {}))
        base = d.get("base_model")
        seed = d.get("merge3_seed", d.get("seed"))
        if base is None and d["merge_method"] == "linear" and models:
            base = models[0]  # linear needs no base: the first model gives config and tokenizer
        return cls(method=d["merge_method"], base_model=path(base) if base else "", models=models,
                   parameters=dict(d.get("parameters") or {}), model_parameters=mparams,
                   dtype=str(d.get("dtype") or "float32"), seed=seed,
                   tokenizer_source=d.get("tokenizer_source"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MergeRecipe":
        path = Path(path)
        return cls.from_dict(read_yaml_mapping(path, "recipe file"), root=path.parent)


def _plain(v):
    """numpy scalars and tuples into plain YAML types."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return float(v)
    return v
