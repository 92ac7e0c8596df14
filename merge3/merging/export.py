"""Writing merged models as Hugging Face folders, and one-off merges of a YAML recipe (`merge3 merge`).

A folder is written into a temporary sibling and renamed into place only when complete, so a crash never
leaves a half-written model where a later step would take it for a finished one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..files import usual_mode, write_error
from .checkpoint import Checkpoint
from .checks import assert_finite, check_compatible
from .kernels import merge_tensor
from .materializer import Materializer, resolve_dtype
from .recipe import MergeRecipe
from .vocab import Vocabulary, check_rows, set_config_vocab_size, vocabulary_for

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"shard size {size!r} not understood: use e.g. 2GB, 500MB")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"shard size must be positive, got {size!r}")
    return n


class ShardWriter:
    """Accumulates tensors and writes ``model-0000i-of-0000N.safetensors`` shards plus the index."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir, self.max_bytes = Path(out_dir), max_bytes
        self._cur: dict = {}
        self._cur_bytes = 0
        self._shards: list[list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._cur and self._cur_bytes + nbytes > self.max_bytes:
            self._flush()
        self._cur[name] = tensor.detach().to("cpu").contiguous()
        self._cur_bytes += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        i = len(self._shards)
        path = self.out_dir / f"shard-{i}.tmp"
        try:
            save_file(self._cur, str(path), metadata={"format": "pt"})
        except OSError:
            raise
        except Exception as exc:  # safetensors reports a full disk as its own error type
            raise OSError(errno.EIO, str(exc).strip().splitlines()[0][:300] if str(exc).strip() else
                          type(exc).__name__) from None
        usual_mode(path)  # safetensors creates files 0600
        self._shards.append(list(self._cur))
        self._cur, self._cur_bytes = {}, 0

    def finish(self) -> None:
        if self._cur or not self._shards:
            self._flush()
        n = len(self._shards)
        weight_map = {}
        for i, names in enumerate(self._shards):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out_dir / f"shard-{i}.tmp", self.out_dir / fname)
            weight_map.update({name: fname for name in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def model_card(recipe: MergeRecipe, extra: str = "") -> str:
    names = ", ".join(f"`{Path(m).name}`" for m in recipe.models)
    base = f"`{Path(recipe.base_model).name}`" if recipe.base_model else "none"
    text = (f"---\nlibrary_name: transformers\ntags:\n- merge\n- merge3\n---\n# {recipe.method} merge\n\n"
            f"Merged with merge3 using the **{recipe.method}** method (mergekit 0.1.5 semantics).\n\n"
            f"- Base model: {base}\n- Models: {names}\n- dtype: {recipe.dtype}\n")
    if recipe.seed is not None:
        text += f"- Random seed: {recipe.seed}\n"
    text += f"\n## Recipe\n\n```yaml\n{recipe.to_mergekit_yaml()}```\n"
    if extra:
        text += "\n" + extra.rstrip() + "\n"
    return text


def _write_metadata(tmp: Path, base: Path, recipe: MergeRecipe, extra_card_text: str,
                    vocab: Vocabulary | None = None) -> None:
    cfg = json.loads((base / "config.json").read_text())
    key = "torch_dtype" if "torch_dtype" in cfg and "dtype" not in cfg else "dtype"
    cfg[key] = recipe.dtype
    if vocab is not None:  # mergekit sets it to the output tokenizer's size (tie_word_embeddings stays the base's)
        set_config_vocab_size(cfg, vocab.size)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if vocab is not None and vocab.tokenizer_changed:
        vocab.tokenizer.save_pretrained(str(tmp))  # the union: the base's tokenizer plus the added tokens
        usual_mode(*tmp.iterdir())
    else:  # the base's vocabulary: its own files, byte for byte
        src = Path(vocab.base) if vocab is not None else base  # a linear YAML without base_model: the first model
        for f in TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
    if (base / "generation_config.json").is_file():
        shutil.copy2(base / "generation_config.json", tmp / "generation_config.json")
    else:
        from transformers import GenerationConfig, PretrainedConfig

        GenerationConfig.from_model_config(PretrainedConfig.from_dict(cfg)).save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(recipe, extra_card_text))
    (tmp / "mergekit_config.yml").write_text(recipe.to_mergekit_yaml())


class _Staging:
    """A temporary sibling of out_dir, renamed into place on success and removed on failure."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise ValueError(f"{self.out} already exists; choose a new output folder")
        parent = self.out.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        if not os.access(parent, os.W_OK):
            raise ValueError(f"cannot write into {parent}")
        self.tmp = parent / f".{self.out.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        for old in self.tmp.parent.glob(f".{self.out.name}.tmp-*"):  # left by a killed writer of the same folder
            pid = old.name.rsplit("-", 1)[-1]
            if old == self.tmp or not (pid.isdigit() and _alive(int(pid))):
                shutil.rmtree(old, ignore_errors=True)
        try:
            self.tmp.mkdir(parents=True)
        except OSError as exc:
            raise write_error(self.out, exc) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                if self.out.exists():
                    self.out.rmdir()  # an empty folder given as the output
                os.replace(self.tmp, self.out)
            except OSError as exc:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise write_error(self.out, exc) from None
            return False
        shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):  # disk full, read-only, ...
            raise write_error(self.out, exc) from None
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def merge_to_dir(recipe: MergeRecipe, out_dir: str | Path, device: str | None = None, shard_size="2GB",
                 extra_card_text: str = "") -> Path:
    """Streams a merge tensor by tensor (memory: one shard plus one tensor per input) into a new folder.

    All checks (recipe, files, architectures, names, shapes, finite weights, every tensor's parameters) run
    before any arithmetic."""
    recipe.validate()
    max_bytes = parse_size(shard_size)
    out_dtype = resolve_dtype(recipe.dtype)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inputs = [p for p, _ in recipe.inputs()]
    vocab = vocabulary_for(recipe)  # loads every tokenizer: a bad one fails here, before any arithmetic
    others = inputs + [m for m in (vocab.models if vocab else []) if m not in inputs]
    ckpts = check_compatible(recipe.base_model, others, check_values=True,
                             vocab_tensors=vocab.tensors if vocab else frozenset())
    if vocab is not None:
        check_rows(vocab, ckpts)
    base = ckpts[0]
    by_path = {str(c.path.resolve()): c for c in ckpts}

    def ckpt(p) -> Checkpoint:
        return by_path[str(Path(p).resolve())]

    plan = [(name, *recipe.resolve(name, base.n_layers)) for name in base.names]
    spec = recipe.spec
    stage = _Staging(out_dir)
    with stage as tmp, torch.no_grad():
        writer = ShardWriter(tmp, max_bytes)
        for name, shared, per_model in plan:
            if vocab is not None and name in vocab.tensors:  # token rows re-indexed onto the output vocabulary
                aligned = vocab.align(name, {m: ckpt(m).get(name, dev) for m in vocab.models})
                # the base's rows are the reference, or (a linear merge whose YAML names no base: the base is
                # not gathered) the first model's, whose own delta is then None
                ref = base if any(ckpt(m) is base for m in aligned) else ckpt(vocab.models[0])
                b = next(t for m, t in aligned.items() if ckpt(m) is ref)
                get = lambda c, p: next(t for m, t in aligned.items() if ckpt(m) is c)  # noqa: E731
            else:
                ref = base
                b = base.get(name, dev)
                get = lambda c, p: c.get(name, dev)  # noqa: E731
            deltas = []
            for p in inputs:
                c = ckpt(p)
                deltas.append(None if c is ref else get(c, p).to(torch.float32) - b.to(torch.float32)
                              if b.is_floating_point() else None)
            merged = merge_tensor(spec, name, b, deltas, shared, per_model, seed=recipe.seed)
            writer.add(name, merged.to(out_dtype) if merged.is_floating_point() else merged)
        writer.finish()
        _write_metadata(tmp, base.path, recipe, extra_card_text, vocab)
    return stage.out


def merge_recipe_file(recipe_path: str | Path, out_dir: str | Path, device: str | None = None,
                      shard_size="2GB") -> Path:
    """`merge3 merge RECIPE OUT_DIR`: runs a mergekit-style YAML recipe and writes a Hugging Face folder."""
    return merge_to_dir(MergeRecipe.from_yaml(recipe_path), out_dir, device=device, shard_size=shard_size)


def export_merged(materializer: Materializer, recipe: MergeRecipe, out_dir: str | Path, extra_card_text: str = "",
                  shard_size="2GB", extra_files: dict[str, str] | None = None) -> Path:
    """Applies a candidate's recipe on the live model and writes it (the search's export step); ``extra_files``
    ({name: text}) are written into the folder before it is renamed into place."""
    materializer.apply(recipe)
    out_dtype = resolve_dtype(recipe.dtype)
    stage = _Staging(out_dir)
    with stage as tmp:
        writer = ShardWriter(tmp, parse_size(shard_size))
        for name, t in materializer.state_dict().items():
            assert_finite(t, f"merged tensor {name}")
            writer.add(name, t.to(out_dtype) if t.is_floating_point() else t)
        writer.finish()
        _write_metadata(tmp, Path(materializer.base_path), recipe, extra_card_text, materializer.vocab)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return stage.out


def export_model(model_or_recipe, out_dir: str | Path, recipe: MergeRecipe | None = None, device: str | None = None,
                 shard_size="2GB", extra_card_text: str = "") -> Path:
    """Writes either a recipe (streamed from disk) or a Materializer's merge of ``recipe``."""
    if isinstance(model_or_recipe, MergeRecipe):
        return merge_to_dir(model_or_recipe, out_dir, device=device, shard_size=shard_size,
                            extra_card_text=extra_card_text)
    if isinstance(model_or_recipe, Materializer):
        if recipe is None:
            raise ValueError("export_model(materializer, ...) needs the recipe to apply")
        return export_merged(model_or_recipe, recipe, out_dir, extra_card_text, shard_size)
    raise ValueError(f"export_model expects a MergeRecipe or a Materializer, got {type(model_or_recipe).__name__}")


def load_checkpoint(path: str | Path) -> Checkpoint:
    return Checkpoint(path)
