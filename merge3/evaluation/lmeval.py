"""Per-item responses from lm-eval.

``TaskSuite`` loads the lm-eval tasks once (task files, datasets) and then evaluates any number of models on
all items or on a subset (anchors), returning binary correctness keyed by stable item ids. Models are either
a path (loaded by lm-eval's ``hf`` model) or a live ``transformers`` model (the materializer's), wrapped once
with ``wrap_model`` and re-used while its weights change in place.

Item ids: the document's ``id`` field when the task's data has one (the tiny world's do), else
``<task>:<doc index>`` (lm-eval's ``doc_id``; stable as long as the dataset is).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..quiet import muted

Responses = dict[str, dict[str, int]]  # task -> item id -> 1 (correct) / 0


def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval", "datasets", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def unknown_tasks(tasks: list[str], include_path: str | Path | None) -> list[str]:
    """The tasks lm-eval does not know (with ``include_path``'s task YAMLs, or its own tasks when None)."""
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_path is None)
    return [t for t in tasks if t not in manager.all_tasks]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class EvalOptions:
    """lm-eval arguments passed through to every evaluation."""

    num_fewshot: int | None = None
    batch_size: int | str = 64
    limit: int | float | None = None
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    device: str | None = None
    dtype: str = "auto"
    fewshot_seed: int = 1234
    extra_model_args: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "EvalOptions":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown evaluation option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class TaskSuite:
    """A fixed set of lm-eval tasks, loaded once, evaluated many times."""

    def __init__(self, tasks: list[str], include_path: str | Path | None = None, options: EvalOptions | None = None,
                 include_defaults: bool | None = None, cache_dir: str | Path | None = None):
        _quiet_lm_eval()
        if cache_dir is not None and "HF_DATASETS_CACHE" not in os.environ:
            # Keep datasets' cache out of the user's home: next to the run or world that needs it.
            os.environ["HF_DATASETS_CACHE"] = str(Path(cache_dir) / "hf_datasets")
        from lm_eval.tasks import TaskManager, get_task_dict

        self.tasks = list(tasks)
        self.options = options or EvalOptions()
        if include_defaults is None:
            include_defaults = include_path is None
        manager = TaskManager(include_path=str(include_path) if include_path else None,
                              include_defaults=include_defaults)
        missing = [t for t in self.tasks if t not in manager.all_tasks]
        if missing:
            where = f" (include path {include_path})" if include_path else ""
            raise ValueError(f"lm-eval does not know task(s) {missing}{where}")
        self.task_dict = get_task_dict(self.tasks, manager)
        for task in self.task_dict.values():
            if self.options.num_fewshot is not None:
                task.set_config(key="num_fewshot", value=self.options.num_fewshot)
            task.set_fewshot_seed(seed=self.options.fewshot_seed)
        self._ids = {name: [self._item_id(name, i, doc) for i, doc in enumerate(task.eval_docs)]
                     for name, task in self.task_dict.items()}
        # item id -> document index, built once: subset evaluation runs once per search candidate
        self._index = {name: {iid: i for i, iid in enumerate(ids)} for name, ids in self._ids.items()}

    @staticmethod
    def _item_id(task: str, index: int, doc) -> str:
        if isinstance(doc, dict) and "id" in doc:
            return str(doc["id"])
        return f"{task}:{index}"

    def item_ids(self, task: str) -> list[str]:
        """All item ids of ``task``, in dataset order."""
        return list(self._ids[task])

    def n_items(self) -> dict[str, int]:
        return {t: len(ids) for t, ids in self._ids.items()}

    def wrap_model(self, model, tokenizer=None):
        """An lm-eval LM for a path or a live ``transformers`` model (not copied: in-place changes show)."""
        from lm_eval.models.huggingface import HFLM

        o = self.options
        kwargs = dict(device=o.device or default_device(), batch_size=o.batch_size, **o.extra_model_args)
        if isinstance(model, (str, Path)):
            return HFLM(pretrained=str(model), dtype=o.dtype, **kwargs)
        return HFLM(pretrained=model, tokenizer=tokenizer, **kwargs)

    def evaluate(self, lm, items: dict[str, list[str]] | None = None) -> Responses:
        """Correctness of every item (``items=None``) or of the given item ids per task."""
        from lm_eval.evaluator import evaluate

        samples = None
        task_dict = self.task_dict
        if items is not None:
            unknown = [t for t in items if t not in self._ids]
            if unknown:
                raise ValueError(f"items given for task(s) {unknown} outside this suite {self.tasks}")
            samples = {}
            for t, ids in items.items():
                index = self._index[t]
                bad = [iid for iid in ids if iid not in index]
                if bad:
                    raise ValueError(f"task {t}: unknown item id(s) {bad[:5]}")
                samples[t] = sorted(index[iid] for iid in ids)
            task_dict = {t: self.task_dict[t] for t in items if samples[t]}
            samples = {t: s for t, s in samples.items() if s}
            if not task_dict:
                return {t: {} for t in items}
        o = self.options
        with muted("lm_eval"):  # lm-eval forces its progress bars on
            res = evaluate(lm=lm, task_dict=task_dict, limit=o.limit if samples is None else None, samples=samples,
                           log_samples=True, bootstrap_iters=0, apply_chat_template=o.apply_chat_template,
                           fewshot_as_multiturn=o.fewshot_as_multiturn, system_instruction=o.system_instruction,
                           verbosity="ERROR")
        out: Responses = {}
        for t in task_dict:
            out[t] = {self._ids[t][s["doc_id"]]: int(round(float(s["acc"]))) for s in res["samples"][t]}
        return out


def accuracy(responses: Responses) -> dict[str, float]:
    """Mean correctness per task (0..1)."""
    return {t: (sum(r.values()) / len(r) if r else float("nan")) for t, r in responses.items()}
