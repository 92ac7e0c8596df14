"""IRT item parameters in one canonical form, whatever model fitted them.

Item ``i`` has a discrimination vector ``alpha_i`` (R^d) and an intercept ``beta_i``; a model with ability
``theta`` (R^d) answers it correctly with probability

    P(y_i = 1 | theta) = sigmoid(alpha_i . theta - beta_i)                        (MERGE3 eq. 1; tinyBenchmarks)

py-irt's parametrizations are converted on import (see ``merge3.irt.fit``): its ``2pl`` is
``a (theta - b)``, so alpha = a, beta = a b; its ``multidim_2pl`` is ``sum_d a_d (theta_d - b_d)``, so
alpha = a, beta = a . b.

Items are keyed by ``(task, item_id)``: ids need only be unique within a task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # no overflow warnings for large |z|

    return expit(z)


@dataclass
class ItemParams:
    tasks: list[str]            # task of each item (row)
    item_ids: list[str]         # id of each item within its task
    alpha: np.ndarray           # (n_items, dim) discriminations
    beta: np.ndarray            # (n_items,) intercepts (difficulty times discrimination)
    model_type: str = "multidim_2pl"
    _index: dict = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.alpha = np.asarray(self.alpha, dtype=np.float64)
        if self.alpha.ndim == 1:
            self.alpha = self.alpha[:, None]
        self.beta = np.asarray(self.beta, dtype=np.float64).reshape(-1)
        n = len(self.item_ids)
        if len(self.tasks) != n or self.alpha.shape[0] != n or self.beta.shape[0] != n:
            raise ValueError(f"item parameters disagree in length: {len(self.tasks)} tasks, {n} ids, "
                             f"alpha {self.alpha.shape}, beta {self.beta.shape}")
        if not (np.all(np.isfinite(self.alpha)) and np.all(np.isfinite(self.beta))):
            raise ValueError("item parameters contain NaN or infinite values")
        self.tasks = [str(t) for t in self.tasks]
        self.item_ids = [str(i) for i in self.item_ids]
        self._index = {(t, i): k for k, (t, i) in enumerate(zip(self.tasks, self.item_ids))}
        if len(self._index) != n:
            raise ValueError("item parameters list some (task, item id) twice")

    @property
    def dim(self) -> int:
        return int(self.alpha.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    def task_names(self) -> list[str]:
        return list(dict.fromkeys(self.tasks))

    def rows(self, task: str, item_ids=None) -> np.ndarray:
        """Row indices of ``item_ids`` of ``task`` (all of its items when None); unknown ids raise."""
        if item_ids is None:
            return np.array([k for k, t in enumerate(self.tasks) if t == task], dtype=np.int64)
        out, missing = [], []
        for i in item_ids:
            k = self._index.get((task, str(i)))
            (missing if k is None else out).append(str(i) if k is None else k)
        if missing:
            raise ValueError(f"task {task}: {len(missing)} item id(s) not in the item parameters, "
                             f"e.g. {missing[:3]} (were the items calibrated on another benchmark version?)")
        return np.array(out, dtype=np.int64)

    def prob(self, theta: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """P(correct) of the given rows (all when None) for one ability vector."""
        a = self.alpha if rows is None else self.alpha[rows]
        b = self.beta if rows is None else self.beta[rows]
        return _sigmoid(a @ np.asarray(theta, dtype=np.float64) - b)

    # -- files --------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """``.npz`` (compact) or ``.json`` (readable), chosen by suffix."""
        path = Path(path)
        if path.suffix == ".npz":
            np.savez(path, alpha=self.alpha, beta=self.beta, tasks=np.array(self.tasks),
                     item_ids=np.array(self.item_ids), model_type=np.array(self.model_type))
        elif path.suffix == ".json":
            path.write_text(json.dumps({"model_type": self.model_type, "dim": self.dim, "tasks": self.tasks,
                                        "item_ids": self.item_ids, "alpha": self.alpha.tolist(),
                                        "beta": self.beta.tolist()}) + "\n")
        else:
            raise ValueError(f"{path}: item parameters are saved as .npz or .json")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ItemParams":
        path = Path(path)
        if path.is_dir():
            for name in ("item_params.npz", "item_params.json"):
                if (path / name).is_file():
                    return cls.load(path / name)
            raise FileNotFoundError(f"{path}: no item_params.npz or item_params.json in this directory")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: item parameter file not found")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    return cls(tasks=z["tasks"].tolist(), item_ids=z["item_ids"].tolist(), alpha=z["alpha"],
                               beta=z["beta"], model_type=str(z["model_type"]))
            d = json.loads(path.read_text())
            return cls(tasks=d["tasks"], item_ids=d["item_ids"], alpha=d["alpha"], beta=d["beta"],
                       model_type=d.get("model_type", "multidim_2pl"))
        except (KeyError, json.JSONDecodeError, ValueError, OSError) as exc:
            raise ValueError(f"{path}: malformed item parameter file ({exc})") from None
