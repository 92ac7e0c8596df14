"""Full-benchmark accuracy from a candidate's answers on the anchors.

Notation, per task: I its N items, S ⊂ I the n anchors with weights w (sum 1), y_i the candidate's 0/1 answer,
p_i(theta) = sigmoid(alpha_i . theta - beta_i) (see ``params``), lambda = n / N.

* ``anchor``  Z = sum_{i in S} w_i y_i                                                 (weighted anchor accuracy)
* ``irt``     Z = (1/N) sum_{i in I} p_i(theta_hat), theta_hat = MAP ability on the anchors of all given tasks
                                                                      (tinyBenchmarks, Polo et al. 2024, eq. 3.1)
* ``pirt``    Z = lambda mean_{i in S} y_i + (1 - lambda) mean_{i in I\\S} p_i(theta_hat)
                                                                      (p-IRT, Polo et al. 2024, eq. 3.2)
* ``gpirt``   Z = delta Z_anchor + (1 - delta) Z_pirt, delta = b^2 / (b^2 + v), with b^2 the mean squared
              error of p-IRT and v the variance of the anchor estimate, both measured on the calibration's
              validation models (gp-IRT, Polo et al. 2024, sec. 3.3: delta trades IRT bias for anchor variance)
* ``mpirt``   theta_tilde = sum_k lambda_k theta_k over the endpoints' abilities theta_k (fitted once on all
              items at calibration); the K weights lambda_k (not constrained to a simplex) are the MAP fit on
              the anchors, a logistic regression with features alpha_i^T [theta_1 .. theta_K];
              Z = lambda mean_{i in S} y_i + (1 - lambda) mean_{i in I\\S} p_i(theta_tilde)
                                                                      (mp-IRT, Mencattini et al. 2025, eq. 4)
* ``gmpirt``  Z = delta' Z_anchor + (1 - delta') Z_mpirt, delta' as for gp-IRT with mp-IRT's error, or a fixed
              value (the MERGE3 code's default is 0.5)              (gmp-IRT, Mencattini et al. 2025, eq. 5)

The observed part of p-IRT and mp-IRT is the plain mean on S (it is exactly those items' share of the
accuracy); with uniform random anchors it equals the papers' sum_i w_i y_i. Everything here is closed form
or a few Newton steps on tens of items: about a millisecond per candidate, deterministic.
"""

from __future__ import annotations

import numpy as np

from .fit import fit_logistic_map, responses_to_rows

ESTIMATORS = ("anchor", "irt", "pirt", "gpirt", "mpirt", "gmpirt")


def _checked_anchor_responses(anchor_responses, anchors):
    """Per task, the 0/1 answers aligned with the anchors' items; missing or foreign ids are errors."""
    out = {}
    for task, got in anchor_responses.items():
        if task not in anchors.items:
            raise ValueError(f"responses for task {task!r}, which has no anchors (anchored: {sorted(anchors.items)})")
        want = anchors.items[task]
        extra = [i for i in got if i not in set(want)]
        missing = [i for i in want if i not in got]
        if extra or missing:
            raise ValueError(f"task {task}: responses do not match the anchors "
                             f"({len(missing)} anchor(s) missing, e.g. {missing[:3]}; "
                             f"{len(extra)} unknown id(s), e.g. {extra[:3]})")
        y = np.array([got[i] for i in want], dtype=np.float64)
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"task {task}: responses must be 0 or 1")
        out[task] = y
    if not out:
        raise ValueError("no anchor responses given")
    return out


def estimate(name: str, anchor_responses: dict[str, dict[str, int]], calibration, anchors) -> dict[str, float]:
    """Estimated full-benchmark accuracy per task (0..1) for the tasks in ``anchor_responses``."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}: expected one of {', '.join(ESTIMATORS)}")
    ys = _checked_anchor_responses(anchor_responses, anchors)
    Z_anchor = {t: float(np.dot(anchors.weights[t], y)) for t, y in ys.items()}
    if name == "anchor":
        return Z_anchor
    params = calibration.item_params
    layout = calibration.layout(anchors)
    rows, y = responses_to_rows(params, {t: dict(zip(anchors.items[t], ys[t])) for t in ys})
    theta = (map_ability if name in ("irt", "pirt", "gpirt") else mp_ability)(calibration, rows, y)
    out = {}
    for t in ys:
        all_rows, rest_rows = layout[t]
        if name == "irt":
            out[t] = float(np.mean(params.prob(theta, all_rows)))
            continue
        lam = len(ys[t]) / len(all_rows)
        rest = float(np.mean(params.prob(theta, rest_rows))) if rest_rows.size else 0.0
        z = lam * float(np.mean(ys[t])) + (1.0 - lam) * rest
        if name in ("gpirt", "gmpirt"):
            delta = calibration.mixing_weight("gpirt" if name == "gpirt" else "gmpirt", anchors, t)
            z = delta * Z_anchor[t] + (1.0 - delta) * z
        out[t] = z
    return out


def map_ability(calibration, rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """theta, the MAP fit on the anchors (prior: the calibration population's abilities): IRT, p- and gp-IRT's."""
    return fit_logistic_map(calibration.item_params.alpha[rows], y, calibration.item_params.beta[rows],
                            calibration.ability_prior_mean, calibration.ability_prior_sd)


def mp_ability(calibration, rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """theta_tilde = Theta_E lambda, lambda the MAP fit on the anchors (prior: the calibration population's weights)."""
    params = calibration.item_params
    E = calibration.endpoint_matrix()            # d x K
    X = params.alpha[rows] @ E                   # n x K features
    lam = fit_logistic_map(X, y, params.beta[rows], prior_mean=calibration.mp_prior_mean,
                           prior_sd=calibration.mp_prior_sd)
    return E @ lam


def estimate_all(names, anchor_responses, calibration, anchors) -> dict[str, dict[str, float]]:
    return {n: estimate(n, anchor_responses, calibration, anchors) for n in names}
