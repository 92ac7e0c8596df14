"""Lazy read access to a Hugging Face folder's safetensors weights (single file or sharded with an index).

Only safetensors are read: no pickle, no remote code. Tensor names, shapes and dtypes come from the headers
without loading any data, so compatibility checks cost almost nothing.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: model folder not found")
        if not (self.path / "config.json").is_file():
            raise ValueError(f"{self.path}: no config.json")
        if (self.path / INDEX).is_file():
            try:
                weight_map = json.loads((self.path / INDEX).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{self.path / INDEX}: unreadable safetensors index ({exc})") from None
            self._files = {name: self.path / shard for name, shard in weight_map.items()}
        elif (self.path / SINGLE).is_file():
            self._files = None
        else:
            raise ValueError(f"{self.path}: no {SINGLE} or {INDEX} (only safetensors weights are read)")
        for f in set(self.files.values()):
            if not f.is_file():
                raise ValueError(f"{f}: safetensors shard listed in the index is missing")
        self._handles: dict = {}

    @cached_property
    def config(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path / 'config.json'}: not valid JSON ({exc})") from None

    @cached_property
    def files(self) -> dict[str, Path]:
        if self._files is not None:
            return self._files
        with safe_open(self.path / SINGLE, framework="pt") as f:
            return {name: self.path / SINGLE for name in f.keys()}

    @property
    def names(self) -> list[str]:
        return list(self.files)

    @cached_property
    def meta(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, safetensors dtype string), read from the headers only."""
        out = {}
        for shard in sorted(set(self.files.values())):
            with safe_open(shard, framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    out[name] = (tuple(sl.get_shape()), sl.get_dtype())
        missing = [n for n in self.files if n not in out]
        if missing:
            raise ValueError(f"{self.path}: tensor {missing[0]} listed in the index is not in its shard")
        return out

    @property
    def n_layers(self) -> int:
        cfg = self.config
        cfg = cfg.get("text_config", cfg) if "num_hidden_layers" not in cfg else cfg
        return int(cfg.get("num_hidden_layers", 0))

    def _handle(self, shard: Path):
        h = self._handles.get(shard)
        if h is None:
            h = self._handles[shard] = safe_open(shard, framework="pt")
        return h

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        try:
            shard = self.files[name]
        except KeyError:
            raise ValueError(f"{self.path}: no tensor {name}") from None
        t = self._handle(shard).get_tensor(name)
        return t if str(device) == "cpu" else t.to(device)

    def close(self) -> None:
        self._handles.clear()
