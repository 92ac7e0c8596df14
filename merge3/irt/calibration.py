"""A calibration as the estimators and anchor methods read it: item parameters, abilities, mixing weights.

``Calibration.load(dir)`` reads a calibration directory written by ``merge3 calibrate`` (``merge3.calibration``);
tests and benchmarks may also build one in memory. A damaged directory is an error that names the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..evaluation.store import ResponseStore
from .anchors import Anchors
from .estimators import estimate
from .params import ItemParams

DEFAULT_ESTIMATOR_SETTINGS = {"gmp_weight": "auto", "gp_weight": "auto", "mp_include_base": True}


class Calibration:
    """What the estimators and anchor methods read; ``Calibration.load(dir)`` or built in memory (tests)."""

    def __init__(self, item_params: ItemParams, abilities: dict[str, list], endpoints: list[str],
                 base: str | None = None, train_models: list[str] | None = None,
                 validation_models: list[str] | None = None, store: ResponseStore | None = None,
                 settings: dict | None = None, cost: dict | None = None, root: Path | None = None,
                 config: dict | None = None):
        self.item_params = item_params
        self.abilities = {m: np.asarray(v, dtype=np.float64) for m, v in abilities.items()}
        missing = [e for e in endpoints + ([base] if base else []) if e not in self.abilities]
        if missing:
            raise ValueError(f"calibration has no ability for model(s) {missing}")
        self.endpoints = list(endpoints)
        self.base = base
        self.train_models = list(train_models or [m for m in self.abilities])
        self.validation_models = list(validation_models or [])
        self.store = store
        self.settings = {**DEFAULT_ESTIMATOR_SETTINGS, **(settings or {})}
        self.cost = dict(cost or {})
        self.root = root
        self.config = dict(config or {})
        self.tasks = item_params.task_names()
        self.n_items = {t: int(len(item_params.rows(t))) for t in self.tasks}
        pop = np.array([self.abilities[m] for m in self.train_models])
        # Candidates' ability prior: the calibration population's spread (a merge lies among its parents).
        self.ability_prior_mean = pop.mean(axis=0) if len(pop) else np.zeros(item_params.dim)
        self.ability_prior_sd = float(max(0.5, np.sqrt(np.mean(pop.var(axis=0)))) if len(pop) > 1 else 1.0)
        # mp-IRT's prior on the combination weights, the same way: the population's own weights
        # (least squares theta_m ~ Theta_E lambda_m), so mp-IRT and IRT are regularized alike.
        E = self.endpoint_matrix()
        lams = np.array([np.linalg.lstsq(E, self.abilities[m], rcond=None)[0] for m in self.train_models]) \
            if len(pop) > 1 else np.zeros((0, E.shape[1]))
        self.mp_prior_mean = lams.mean(axis=0) if len(lams) > 1 else np.full(E.shape[1], 1.0 / E.shape[1])
        self.mp_prior_sd = float(max(0.25, np.sqrt(np.mean(lams.var(axis=0))))) if len(lams) > 1 else 1.0
        self._layouts: dict = {}
        self._weights: dict = {}

    # -- what the estimators read -------------------------------------------------------------------------
    def endpoint_matrix(self) -> np.ndarray:
        """d x K: the abilities mp-IRT combines (the endpoints, and the base when mp_include_base)."""
        names = list(self.endpoints)
        if self.settings.get("mp_include_base", True) and self.base and self.base not in names:
            names.append(self.base)
        return np.column_stack([self.abilities[n] for n in names])

    def layout(self, anchors) -> dict:
        """Per task: (all rows, rows not among the anchors), cached per anchor set."""
        key = anchors.key()
        if key not in self._layouts:
            out = {}
            for t, ids in anchors.items.items():
                all_rows = self.item_params.rows(t)
                anchor_rows = self.item_params.rows(t, ids)
                out[t] = (all_rows, np.setdiff1d(all_rows, anchor_rows))
            self._layouts[key] = out
        return self._layouts[key]

    def population_matrix(self, task: str, item_ids: list[str]) -> np.ndarray:
        """Training population x items 0/1 (for correctness clustering)."""
        if self.store is None:
            raise ValueError("correctness clustering needs the calibration's responses (responses.jsonl)")
        _, _, Y = self.store.matrix(task, models=self.train_models, item_ids=item_ids)
        return Y

    def mixing_weight(self, estimator: str, anchors, task: str) -> float:
        """delta of gp-IRT / gmp-IRT for this anchor set and task (fixed in settings, or b^2 / (b^2 + v))."""
        fixed = self.settings.get("gp_weight" if estimator == "gpirt" else "gmp_weight", "auto")
        if fixed != "auto":
            return float(fixed)
        if anchors.method == "adaptive":
            # Items chosen for their information about this candidate are no random sample: their plain mean
            # is no estimate of the accuracy (12-16 points off in the estimation benchmark), so gp/gmp-IRT
            # reduce to p-/mp-IRT, which count those answers for exactly those items' share.
            return 0.0
        key = (estimator, anchors.key())
        if key not in self._weights:
            self._weights[key] = self._fit_weights(estimator, anchors)
        return self._weights[key].get(task, 0.5)

    def _fit_weights(self, estimator: str, anchors) -> dict[str, float]:
        base_est = "pirt" if estimator == "gpirt" else "mpirt"
        models = self.validation_models or self.train_models  # in-sample when nothing was held out
        if self.store is None or not models:
            return {t: 0.5 for t in anchors.items}
        err2 = {t: [] for t in anchors.items}
        var = {t: [] for t in anchors.items}
        for m in models:
            full = self.store.get(m)
            tasks = [t for t in anchors.items if t in full]
            resp = {t: {i: full[t][i] for i in anchors.items[t]} for t in tasks}
            est = estimate(base_est, resp, self, anchors)
            for t in tasks:
                z = float(np.mean(list(full[t].values())))
                n, N = len(anchors.items[t]), self.n_items[t]
                w = np.asarray(anchors.weights[t])
                err2[t].append((est[t] - z) ** 2)
                # variance of the anchor estimate: Bernoulli(z) answers, finite-population corrected
                var[t].append(z * (1 - z) * float(np.sum(w ** 2)) * (N - n) / max(N - 1, 1))
        out = {}
        for t in anchors.items:
            if not err2[t]:
                out[t] = 0.5
                continue
            b2, v = float(np.mean(err2[t])), float(np.mean(var[t]))
            out[t] = b2 / (b2 + v) if b2 + v > 0 else 0.5
        return out

    def with_models(self, responses: dict[str, dict]) -> "Calibration":
        """This calibration with more models in its population (online calibration): each one's ability is its
        MAP fit on its answers with the item parameters held (prior: this population's); they join the training
        population (so the ability and mp-IRT priors) and the validation models (so the gp/gmp mixing weights
        are re-estimated from the error seen on them). Nothing is written."""
        from .fit import fit_ability

        abilities = dict(self.abilities)
        for m, resp in responses.items():
            if m in abilities:
                raise ValueError(f"model {m!r} is already in the calibration population")
            abilities[m] = fit_ability(self.item_params, {t: r for t, r in resp.items() if t in self.tasks},
                                       self.ability_prior_mean, self.ability_prior_sd)
        new = list(responses)
        store = self.store.with_models(responses) if self.store is not None else ResponseStore.in_memory(responses)
        return Calibration(self.item_params, abilities, self.endpoints, base=self.base,
                           train_models=self.train_models + new, validation_models=self.validation_models + new,
                           store=store, settings=self.settings, cost=self.cost, root=self.root, config=self.config)

    # -- files ----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        root = Path(path)
        meta_path = root / "calibration.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{root}: not a calibration directory (no calibration.json); "
                                    "make one with `merge3 calibrate CONFIG`")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta_path}: malformed calibration file ({exc})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path}: malformed calibration file (expected a JSON object)")
        params = ItemParams.load(root)  # names its own file when damaged
        store = ResponseStore(root / "responses.jsonl") if (root / "responses.jsonl").is_file() else None
        try:
            return cls(params, meta["abilities"], meta["endpoints"], base=meta.get("base"),
                       train_models=meta.get("train_models"), validation_models=meta.get("validation_models"),
                       store=store, settings=meta.get("estimators"), cost=meta.get("cost"), root=root,
                       config=meta.get("config"))
        except KeyError as exc:
            raise ValueError(f"{meta_path}: missing key {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{meta_path}: malformed calibration file ({exc})") from None

    def default_anchors(self) -> Anchors | None:
        p = self.root / "anchors.json" if self.root else None
        return Anchors.load(p) if p and p.is_file() else None
