"""Fitting: item parameters with py-irt (once, at calibration) and abilities by MAP (once per candidate).

Item parameters: py-irt's stochastic variational inference (Lalor & Rodriguez, py-irt) on the reference
population's full response matrix, either ``2pl`` (one ability) or ``multidim_2pl`` (d abilities, hierarchical
priors), as in tinyBenchmarks (Polo et al., 2024), whose leaderboard fits are multidimensional 2PL. Results are
converted to ``sigmoid(alpha . theta - beta)`` (see ``params``).

Abilities: for fixed item parameters the log-posterior of theta under a Gaussian prior N(mu, s^2 I),

    log p(theta | y) = sum_i [ y_i z_i - log(1 + e^{z_i}) ] - |theta - mu|^2 / (2 s^2),  z_i = alpha_i . theta - beta_i,

is strictly concave, so Newton's method converges in a handful of steps, deterministically, in well under a
millisecond for tens of items. The same solver fits the MERGE3 combination weights (``fit_logistic_map``
with features alpha_i^T Theta_endpoints).
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
from scipy.special import expit

from .params import ItemParams

MODEL_TYPES = ("2pl", "multidim_2pl")


def fit_logistic_map(X: np.ndarray, y: np.ndarray, offset: np.ndarray | float = 0.0,
                     prior_mean: np.ndarray | float = 0.0, prior_sd: float = 1.0,
                     max_iter: int = 50, tol: float = 1e-8) -> np.ndarray:
    """argmax_w sum_i log Bernoulli(y_i | sigmoid(X_i . w - offset_i)) - |w - m|^2 / (2 sd^2), by Newton."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    k = X.shape[1]
    m = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (k,)).copy()
    prec = 1.0 / float(prior_sd) ** 2
    w = m.copy()
    off = np.broadcast_to(np.asarray(offset, dtype=np.float64), y.shape)

    def objective(w):
        z = X @ w - off
        return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * prec * np.sum((w - m) ** 2))

    f = objective(w)
    for _ in range(max_iter):
        p = expit(X @ w - off)
        grad = X.T @ (y - p) - prec * (w - m)
        H = (X * (p * (1 - p))[:, None]).T @ X + prec * np.eye(k)
        step = np.linalg.solve(H, grad)
        # Backtracking keeps Newton monotone when the prior is weak and the data nearly separable.
        t = 1.0
        while True:
            w_new = w + t * step
            f_new = objective(w_new)
            if f_new >= f - 1e-12 or t < 1e-6:
                break
            t *= 0.5
        w, f_prev, f = w_new, f, f_new
        if abs(f - f_prev) < tol and np.max(np.abs(t * step)) < 1e-6:
            break
    return w


def fit_ability(params: ItemParams, responses: dict[str, dict[str, int]], prior_mean=0.0,
                prior_sd: float = 1.0) -> np.ndarray:
    """MAP ability theta (R^d) from ``{task: {item_id: 0/1}}`` on any items the parameters know."""
    rows, y = responses_to_rows(params, responses)
    if rows.size == 0:
        raise ValueError("no responses to fit an ability on")
    return fit_logistic_map(params.alpha[rows], y, params.beta[rows], prior_mean, prior_sd)


def responses_to_rows(params: ItemParams, responses: dict[str, dict[str, int]]):
    """(row indices, 0/1 array) of the responses; tasks or ids the parameters lack are an error."""
    rows, ys = [], []
    known = set(params.task_names())
    for task, items in responses.items():
        if task not in known:
            raise ValueError(f"task {task!r} has no item parameters (calibrated tasks: {sorted(known)})")
        ids = list(items)
        rows.append(params.rows(task, ids))
        ys.append(np.array([items[i] for i in ids], dtype=np.float64))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(rows), np.concatenate(ys)


class IrtDiverged(ValueError):
    """py-irt's fit produced NaN parameters (its learning rate is too large for these data)."""


def fit_irt(data, model_type: str = "multidim_2pl", dim: int = 3, epochs: int = 2000, lr: float = 0.1,
            seed: int = 0, priors: str = "hierarchical", models: list[str] | None = None,
            tasks: list[str] | None = None, device: str = "cpu"):
    """Fits item parameters with py-irt. Returns ``(ItemParams, {model_id: theta})``.

    ``data`` is a ``ResponseStore`` (all its models, items every model answered, per task) or a tuple
    ``(model_ids, [(task, item_id), ...], Y)`` with Y a models x items 0/1 matrix.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown IRT model {model_type!r}: expected one of {', '.join(MODEL_TYPES)}")
    model_ids, keys, Y = response_matrix(data, models, tasks)
    if len(model_ids) < 2:
        raise ValueError(f"an IRT fit needs responses of at least 2 models, got {len(model_ids)}")
    import pandas as pd
    import pyro
    import torch
    from py_irt.config import IrtConfig
    from py_irt.dataset import Dataset
    from py_irt.training import IrtModelTrainer

    pyro.set_rng_seed(seed)  # py-irt ignores IrtConfig.seed
    cols = [f"i{k}" for k in range(len(keys))]  # plain column names: item ids may contain anything
    df = pd.DataFrame(Y.astype(float), columns=cols)
    df.insert(0, "subject", list(model_ids))
    dataset = Dataset.from_pandas(df, subject_column="subject", item_columns=cols)
    kw = dict(model_type=model_type, epochs=int(epochs), lr=float(lr), log_every=10 ** 9)
    if model_type == "multidim_2pl":
        kw["dims"] = int(dim)
    else:
        kw["priors"] = priors
    chatter = io.StringIO()  # py-irt prints to the console (rich); its lines go to the py_irt log instead
    with contextlib.redirect_stdout(chatter):
        trainer = IrtModelTrainer(config=IrtConfig(**kw), data_path=None, dataset=dataset, verbose=False)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            try:
                trainer.train(device=device)
            except ValueError as exc:
                if "invalid values" in str(exc) or "nan" in str(exc).lower():
                    raise IrtDiverged(f"the IRT fit diverged (NaN parameters) with lr {lr:g}") from None
                raise
    for line in chatter.getvalue().splitlines():
        if line.strip():
            logging.getLogger("py_irt").info(line.rstrip())
    p = trainer.last_params
    item_of = _index_map(p["item_ids"])
    subj_of = _index_map(p["subject_ids"])
    disc = np.asarray(p["disc"], dtype=np.float64)
    diff = np.asarray(p["diff"], dtype=np.float64)
    ability = np.asarray(p["ability"], dtype=np.float64)
    if disc.ndim == 1:
        disc, diff, ability = disc[:, None], diff[:, None], ability[:, None]
    order = [item_of[c] for c in cols]  # py-irt's row of each of our columns
    alpha = disc[order]
    beta = np.sum(disc[order] * diff[order], axis=1)
    thetas = {m: ability[subj_of[m]] for m in model_ids}
    params = ItemParams(tasks=[t for t, _ in keys], item_ids=[i for _, i in keys], alpha=alpha, beta=beta,
                        model_type=model_type)
    return params, thetas


def _index_map(ix_to_id) -> dict:
    items = ix_to_id.items() if isinstance(ix_to_id, dict) else enumerate(ix_to_id)
    return {str(v): int(k) for k, v in items}


def response_matrix(data, models, tasks):
    from ..evaluation.store import ResponseStore

    if isinstance(data, ResponseStore):
        tasks = tasks or data.tasks()
        model_ids = models or [m for m in data.models() if all(t in data.get(m) for t in tasks)]
        keys, blocks = [], []
        for t in tasks:
            _, ids, Y = data.matrix(t, models=model_ids)
            keys += [(t, i) for i in ids]
            blocks.append(Y)
        return list(model_ids), keys, np.concatenate(blocks, axis=1)
    try:
        model_ids, keys, Y = data
    except (TypeError, ValueError):
        raise ValueError("fit_irt expects a ResponseStore or (model_ids, [(task, item_id)], Y)") from None
    Y = np.asarray(Y)
    if Y.shape != (len(model_ids), len(keys)):
        raise ValueError(f"response matrix is {Y.shape}, expected ({len(model_ids)} models, {len(keys)} items)")
    if not np.isin(Y, (0, 1)).all():
        raise ValueError("response matrix must hold only 0 and 1")
    keys = [(str(t), str(i)) for t, i in keys]
    return list(model_ids), keys, Y


def _capped(step: np.ndarray, limit: float = 1.0) -> np.ndarray:
    """Newton steps shortened to at most ``limit`` per row: near-separable items must not jump to infinity."""
    norm = np.max(np.abs(step), axis=-1, keepdims=True)
    return step * np.minimum(1.0, limit / np.maximum(norm, 1e-12))


def refine_map(params: ItemParams, thetas: dict, Y: np.ndarray, models: list[str], iters: int = 30,
               item_sd: float = 2.0, theta_sd: float = 2.0) -> tuple[ItemParams, dict]:
    """Polishes a py-irt fit to the joint MAP by alternating batched Newton steps (items, then abilities).

    py-irt's mean-field SVI is slow to converge on small populations (discriminations stay shrunk towards its
    hierarchical prior); starting from its solution, this maximizes
        sum_{m,i} log Bernoulli(Y_mi | sigmoid(alpha_i . theta_m - beta_i))
        - |(alpha_i, beta_i) - (alpha_i, beta_i)_py-irt|^2 / (2 item_sd^2) - |theta_m - mean|^2 / (2 theta_sd^2),
    whose prior keeps it near py-irt's solution (and so its orientation of the ability space). Deterministic.
    ``Y`` is models x items in the parameters' row order.
    """
    Y = np.asarray(Y, dtype=np.float64)
    A, B = params.alpha.copy(), params.beta.copy()
    W0 = np.column_stack([A, -B])                      # item weights on features (theta, 1)
    W = W0.copy()
    T = np.array([thetas[m] for m in models], dtype=np.float64)
    mu = T.mean(axis=0)
    d = A.shape[1]
    pi, pt = 1.0 / item_sd ** 2, 1.0 / theta_sd ** 2
    for _ in range(int(iters)):
        X = np.column_stack([T, np.ones(len(T))])      # models x (d+1)
        P = expit(X @ W.T)                             # models x items
        G = X.T @ (Y - P) - pi * (W - W0).T            # (d+1) x items
        H = np.einsum("mi,mj,mn->nij", X, X, P * (1 - P)) + pi * np.eye(d + 1)
        W = W + _capped(np.linalg.solve(H, G.T[..., None])[..., 0])
        A, Bneg = W[:, :d], W[:, d]
        P = expit(T @ A.T + Bneg)                      # abilities step with items fixed
        G = (Y - P) @ A - pt * (T - mu)                # models x d
        H = np.einsum("ni,nj,mn->mij", A, A, P * (1 - P)) + pt * np.eye(d)
        T = T + _capped(np.linalg.solve(H, G[..., None])[..., 0])
    out = ItemParams(tasks=params.tasks, item_ids=params.item_ids, alpha=W[:, :d], beta=-W[:, d],
                     model_type=params.model_type)
    return out, {m: T[k] for k, m in enumerate(models)}
