"""Adaptive items (computerized adaptive testing) for one candidate: each next batch of items is the one that
most reduces the uncertainty of the accuracy estimates, at the current ability estimate.

Model: the calibration's multidimensional 2PL, p_i(theta) = sigmoid(alpha_i . theta - beta_i). After the answers
so far, theta_hat is the MAP ability (prior: the calibration population's) and Sigma = (prior precision +
sum_answered w_i alpha_i alpha_i^T)^-1, w_i = p_i (1 - p_i), its posterior covariance (Laplace). A task's
accuracy Z_t(theta) = mean_{i in t} p_i(theta) then has variance about v_t = g_t^T Sigma g_t (delta method,
g_t = grad Z_t). Answering item j lowers v_t by w_j (g_t^T Sigma alpha_j)^2 / (1 + w_j alpha_j^T Sigma alpha_j)
(a rank-one update of Sigma), so the next item is the unanswered one with the largest total reduction: Fisher
information spent where the accuracy estimates are unsure, not on the ability's dimensions no task needs.
Items are chosen in batches (one lm-eval call each), greedily within a batch with Sigma updated per item.

Stopping: every task's posterior standard deviation sqrt(v_t) at or below ``target_sd``, or ``max_items`` per
task answered. The estimate is p-IRT's: the answered items' plain mean and the model's prediction for the rest.

Exposure control (``exposure`` > 1, "randomesque", Kingsbury & Zara 1989): each item is drawn uniformly among
the ``exposure`` most informative ones, from a stream seeded by the candidate. With ``exposure`` 1 every
candidate near the prior starts with the same items, and a search can then specialise on them as on fixed
anchors; drawing among near-equally informative items spreads the questions over the benchmark. Deterministic
either way: the same seed asks the same items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from .fit import fit_logistic_map


@dataclass
class AdaptiveSettings:
    target_sd: float = 0.02      # stop when every task's accuracy is known to this posterior sd (0..1 scale)
    max_items: int = 60          # per task
    min_items: int = 4           # per task, before the stopping rule is consulted
    batch: int = 4               # items per task per step (one evaluation call per step)
    exposure: int = 1            # each item drawn among this many most informative ones (1: the most informative)

    def __post_init__(self):
        if not 0 < self.target_sd < 1:
            raise ValueError(f"adaptive target_sd: expected a number in (0, 1), got {self.target_sd!r}")
        for name in ("max_items", "min_items", "batch", "exposure"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"adaptive {name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.min_items > self.max_items:
            raise ValueError(f"adaptive min_items {self.min_items} exceeds max_items {self.max_items}")


@dataclass
class AdaptiveResult:
    estimates: dict[str, float]
    responses: dict[str, dict[str, int]]     # every item answered, per task
    sd: dict[str, float]                      # final posterior sd of each task's accuracy
    steps: int = 0
    items: dict[str, int] = field(default_factory=dict)


def run_adaptive(calibration, tasks: list[str], answer, settings: AdaptiveSettings | None = None,
                 exclude: dict[str, list[str]] | None = None, seed: int = 0) -> AdaptiveResult:
    """Tests one candidate adaptively. ``answer({task: [item ids]}) -> {task: {item id: 0/1}}`` evaluates it;
    ``exclude``: item ids per task never asked (a held-out test split); ``seed``: the exposure-control draws."""
    s = settings or AdaptiveSettings()
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 31337])
    params = calibration.item_params
    rows = {t: params.rows(t) for t in tasks}
    ids = {t: [params.item_ids[r] for r in rows[t]] for t in tasks}
    prior_mean = np.broadcast_to(np.asarray(calibration.ability_prior_mean, dtype=np.float64), (params.dim,))
    prior_prec = 1.0 / calibration.ability_prior_sd ** 2
    asked = {t: np.zeros(len(rows[t]), dtype=bool) for t in tasks}
    # never asked: a held-out split (marked as not askable; the estimate still covers every item)
    barred = {t: np.isin(ids[t], list((exclude or {}).get(t, ()))) for t in tasks}
    answers: dict[str, dict[str, int]] = {t: {} for t in tasks}
    theta = prior_mean.copy()
    steps = 0
    while True:
        sigma, grads = _posterior(params, rows, asked, theta, prior_prec, tasks)
        sd = {t: float(np.sqrt(max(grads[t] @ sigma @ grads[t], 0.0))) for t in tasks}
        open_tasks = [t for t in tasks if asked[t].sum() < s.max_items
                      and (asked[t].sum() < s.min_items or sd[t] > s.target_sd) and not (asked[t] | barred[t]).all()]
        if not open_tasks:
            break
        want = _choose(params, rows, asked, barred, theta, sigma, grads, open_tasks, s, rng)
        got = answer({t: [ids[t][j] for j in js] for t, js in want.items()})
        for t, js in want.items():
            for j in js:
                answers[t][ids[t][j]] = int(got[t][ids[t][j]])
                asked[t][j] = True
        theta = _map_ability(params, rows, asked, answers, ids, prior_mean, calibration.ability_prior_sd, tasks)
        steps += 1
    estimates = {}
    for t in tasks:
        y = np.array([answers[t][ids[t][j]] for j in np.flatnonzero(asked[t])], dtype=np.float64)
        rest = rows[t][~asked[t]]
        lam = asked[t].mean()
        pred = float(np.mean(expit(params.alpha[rest] @ theta - params.beta[rest]))) if rest.size else 0.0
        estimates[t] = lam * float(y.mean()) + (1.0 - lam) * pred if y.size else pred
    return AdaptiveResult(estimates=estimates, responses=answers, sd=sd, steps=steps,
                          items={t: int(asked[t].sum()) for t in tasks})


def _posterior(params, rows, asked, theta, prior_prec, tasks):
    """Laplace posterior covariance of theta and each task's accuracy gradient, at ``theta``."""
    d = params.dim
    info = prior_prec * np.eye(d)
    grads = {}
    for t in tasks:
        a = params.alpha[rows[t]]
        p = expit(a @ theta - params.beta[rows[t]])
        w = p * (1 - p)
        A = a[asked[t]]
        info += (A * w[asked[t], None]).T @ A
        grads[t] = (a * w[:, None]).mean(axis=0)  # d/dtheta of mean_i p_i
    return np.linalg.inv(info), grads


def _choose(params, rows, asked, barred, theta, sigma, grads, open_tasks, s: AdaptiveSettings,
            rng) -> dict[str, list[int]]:
    """Up to ``s.batch`` items per open task, greedily by the reduction of sum_t v_t (drawn among the
    ``s.exposure`` largest), Sigma updated per pick."""
    picks = {t: [] for t in open_tasks}
    G = np.column_stack([grads[t] for t in grads])          # d x T
    cand = {t: np.flatnonzero(~(asked[t] | barred[t])) for t in open_tasks}
    wts = {}
    for t in open_tasks:
        z = params.alpha[rows[t]] @ theta - params.beta[rows[t]]
        p = expit(z)
        wts[t] = p * (1 - p)
    for _ in range(s.batch):
        for t in open_tasks:
            room = s.max_items - int(asked[t].sum()) - len(picks[t])
            left = np.setdiff1d(cand[t], picks[t], assume_unique=True)
            if room <= 0 or left.size == 0:
                continue
            A = params.alpha[rows[t][left]]                   # m x d
            w = wts[t][left]
            SA = A @ sigma                                     # m x d (sigma symmetric)
            gain = w[:, None] * (SA @ G) ** 2 / (1.0 + w * np.einsum("md,md->m", SA, A))[:, None]
            total = gain.sum(axis=1)
            if s.exposure > 1:
                top = np.argsort(-total, kind="stable")[:s.exposure]
                best = int(left[int(top[rng.integers(top.size)])])
            else:
                best = int(left[int(np.argmax(total))])
            picks[t].append(best)
            a = params.alpha[rows[t][best]]
            sa = sigma @ a
            wb = wts[t][best]
            sigma = sigma - np.outer(sa, sa) * wb / (1.0 + wb * a @ sa)
    return {t: js for t, js in picks.items() if js}


def _map_ability(params, rows, asked, answers, ids, prior_mean, prior_sd, tasks):
    r = np.concatenate([rows[t][asked[t]] for t in tasks])
    y = np.concatenate([np.array([answers[t][ids[t][j]] for j in np.flatnonzero(asked[t])], dtype=np.float64)
                        for t in tasks])
    return fit_logistic_map(params.alpha[r], y, params.beta[r], prior_mean, prior_sd)
