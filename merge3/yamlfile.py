"""Reading the YAML files users write (recipes, search and calibration configs) with one-line errors."""

from __future__ import annotations

from pathlib import Path


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The top-level mapping of the YAML file ``path`` (empty file: ``{}``); ``what`` names it in errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping of {what} keys at the top level")
    return raw
