"""Reading the YAML files users write (recipes, search and calibration configs) and run directories'
config.yaml, with one-line errors.

Aliases (``*name``) are refused: merge3's files never need them, and a few hundred bytes of nested aliases
(a "billion laughs" file) expand to gigabytes once loaded. Files above ``MAX_BYTES`` are refused too.
"""

from __future__ import annotations

from pathlib import Path

MAX_BYTES = 4 * 1024 * 1024


def _loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*{self.peek_event().anchor}) are not "
                                     "accepted in merge3 files; write the values out")
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_yaml_text(text: str, where: str):
    """``yaml.safe_load`` without aliases; ``where`` (the file) names it in errors."""
    import yaml

    if len(text) > MAX_BYTES:
        raise ValueError(f"{where}: {len(text)} bytes, more than a merge3 YAML file may hold ({MAX_BYTES})")
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The top-level mapping of the YAML file ``path`` (empty file: ``{}``); ``what`` names it in errors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    if p.stat().st_size > MAX_BYTES:
        raise ValueError(f"{p}: {p.stat().st_size} bytes, more than a merge3 YAML file may hold ({MAX_BYTES})")
    try:
        text = p.read_text()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not a text file ({exc.reason})") from None
    raw = load_yaml_text(text, str(p))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping of {what} keys at the top level")
    return raw
