"""An appendable, reloadable store of per-item responses: one JSON object per line, fsynced on append.

Each line is ``{"model": id, "responses": {task: {item_id: 0|1}}, "meta": {...}}``. A model added twice
keeps its responses merged (later lines win per item), so partial evaluations (anchors first, the full
benchmark later) accumulate. A torn last line (a crash mid-write) is ignored with the file truncated back
on the next append; any other malformed line is an error naming the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

Responses = dict[str, dict[str, int]]


def _check_responses(responses, where: str) -> Responses:
    if not isinstance(responses, dict):
        raise ValueError(f"{where}: responses must be {{task: {{item_id: 0/1}}}}, got {type(responses).__name__}")
    out: Responses = {}
    for task, items in responses.items():
        if not isinstance(items, dict):
            raise ValueError(f"{where}: task {task!r} must map item ids to 0/1, got {type(items).__name__}")
        clean = {}
        for iid, v in items.items():
            if isinstance(v, bool):
                v = int(v)
            if v not in (0, 1) or isinstance(v, str):
                raise ValueError(f"{where}: task {task!r} item {iid!r} has response {v!r}; expected 0 or 1")
            clean[str(iid)] = int(v)
        out[str(task)] = clean
    return out


class ResponseStore:
    """Responses of every model evaluated, in ``path`` (a .jsonl file, or a directory holding responses.jsonl)."""

    FILENAME = "responses.jsonl"

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir() or (not path.suffix and not path.exists()):
            path = path / self.FILENAME
        self.path = path
        self._data: dict[str, Responses] = {}
        self._meta: dict[str, dict] = {}
        self._good_bytes = 0  # length of the well-formed prefix (a torn tail is cut before appending)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        offset = 0
        for n, line in enumerate(lines, start=1):
            last = n == len(lines)
            end = offset + len(line) + (0 if last else 1)
            if line.strip():
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    if last:  # no newline after it: an append cut short by a crash
                        break
                    raise ValueError(f"{self.path}:{n}: malformed response line ({exc.msg if hasattr(exc, 'msg') else exc})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("model"), str) or "responses" not in rec:
                    raise ValueError(f"{self.path}:{n}: expected an object with 'model' (string) and 'responses'")
                self._merge(rec["model"], _check_responses(rec["responses"], f"{self.path}:{n}"), rec.get("meta"))
            offset = end
        self._good_bytes = min(offset, len(raw))

    def _merge(self, model_id: str, responses: Responses, meta: dict | None) -> None:
        cur = self._data.setdefault(model_id, {})
        for task, items in responses.items():
            cur.setdefault(task, {}).update(items)
        if meta:
            self._meta.setdefault(model_id, {}).update(meta)
        else:
            self._meta.setdefault(model_id, {})

    def add(self, model_id: str, responses: Responses, meta: dict | None = None) -> None:
        """Appends (durably: flushed and fsynced before returning) and merges into memory."""
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("model id must be a non-empty string")
        if self.path is None:
            raise ValueError("this response store is an in-memory copy: it cannot be appended to")
        responses = _check_responses(responses, f"model {model_id}")
        line = json.dumps({"model": model_id, "responses": responses, "meta": meta or {}}, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() > self._good_bytes:
                f.truncate(self._good_bytes)  # drop a torn tail left by a crash
                f.seek(self._good_bytes)
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
            self._good_bytes = f.tell()
        self._merge(model_id, responses, meta)

    @classmethod
    def in_memory(cls, responses: dict[str, Responses] | None = None) -> "ResponseStore":
        """A store that lives in memory only (``add`` refuses): e.g. a calibration population grown while a
        search runs, without touching the calibration's own file."""
        store = object.__new__(cls)
        store.path, store._good_bytes, store._data, store._meta = None, 0, {}, {}
        for m, resp in (responses or {}).items():
            store._merge(m, _check_responses(resp, f"model {m}"), None)
        return store

    def with_models(self, extra: dict[str, Responses]) -> "ResponseStore":
        """An in-memory copy of this store holding ``extra`` too."""
        copy = ResponseStore.in_memory(self._data)
        copy._meta.update({m: dict(v) for m, v in self._meta.items()})
        for m, resp in extra.items():
            copy._merge(m, _check_responses(resp, f"model {m}"), None)
        return copy

    def models(self) -> list[str]:
        return list(self._data)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, model_id: str) -> Responses:
        if model_id not in self._data:
            raise KeyError(f"{self.path}: no responses for model {model_id!r}")
        return {t: dict(r) for t, r in self._data[model_id].items()}

    def meta(self, model_id: str) -> dict:
        return dict(self._meta.get(model_id, {}))

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(t for r in self._data.values() for t in r))

    def matrix(self, task: str, models: list[str] | None = None, item_ids: list[str] | None = None):
        """``(model_ids, item_ids, Y)`` with Y (models x items) in {0, 1}.

        Items default to those every chosen model answered (in first-seen order); asking for items some
        model lacks is an error naming it, so a matrix never silently mixes missing values with wrong answers.
        """
        models = list(models) if models is not None else [m for m in self._data if task in self._data[m]]
        if not models:
            raise ValueError(f"{self.path}: no model has responses for task {task!r}")
        for m in models:
            if m not in self._data:
                raise KeyError(f"{self.path}: no responses for model {m!r}")
        if item_ids is None:
            common = None
            for m in models:
                keys = self._data[m].get(task, {})
                common = [i for i in keys] if common is None else [i for i in common if i in keys]
            item_ids = common or []
        Y = np.zeros((len(models), len(item_ids)), dtype=np.int8)
        for r, m in enumerate(models):
            got = self._data[m].get(task, {})
            missing = [i for i in item_ids if i not in got]
            if missing:
                raise ValueError(f"{self.path}: model {m!r} has no response for {len(missing)} item(s) of "
                                 f"{task!r}, e.g. {missing[:3]}")
            Y[r] = [got[i] for i in item_ids]
        return models, list(item_ids), Y
