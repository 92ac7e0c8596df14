"""Keeps third-party chatter off the terminal: merge3 prints its own progress, the libraries it drives do not.

``quiet_third_party()`` (the CLI calls it unless ``--verbose``) turns off the progress bars of lm-eval,
datasets and py-irt, tells Ray to log errors only, and sends the INFO logs and Python warnings of lm-eval,
datasets, transformers and py-irt to a log file while ``log_to(path)`` is active (a search names
``RUN_DIR/third_party.log``), or drops them below ERROR otherwise. Call it before those libraries are
imported: tqdm reads its defaults from the environment at import time. merge3's own bars
(``merge3.progress``) are not affected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

THIRD_PARTY = ("lm_eval", "lm-eval", "datasets", "transformers", "huggingface_hub", "accelerate", "py_irt", "pyro",
               "py.warnings")  # torch and Ray keep their own handlers: Ray is told its level, torch is quiet
_state = {"quiet": False}


def quiet_third_party() -> None:
    _state["quiet"] = True
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads TQDM_* defaults at import; merge3's own bars pass disable=False
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.captureWarnings(True)
    _route(logging.NullHandler(), logging.ERROR)


def _route(handler: logging.Handler, level: int) -> None:
    """Every third-party logger sends ``level`` and up to ``handler`` only."""
    for name in THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.setLevel(level)
        logger.handlers = [handler]


@contextlib.contextmanager
def log_to(path: str | Path):
    """In quiet mode, third-party logs and warnings (INFO and up) go to ``path`` while the block runs."""
    if not _state["quiet"]:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    _route(handler, logging.INFO)
    try:
        yield
    finally:
        _route(logging.NullHandler(), logging.ERROR)
        handler.close()


@contextlib.contextmanager
def muted(logger: str):
    """In quiet mode, what the block writes to stderr (progress bars of libraries that force them on, such as
    lm-eval's) goes to ``logger`` instead of the terminal."""
    if not _state["quiet"]:
        yield
        return
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink):
            yield
    finally:
        lines = [ln for ln in sink.getvalue().replace("\r", "\n").splitlines() if ln.strip()]
        if lines:
            logging.getLogger(logger).info("%s", lines[-1])


def ray_logging_level() -> int:
    """The level Ray logs at on the driver: errors only in quiet mode."""
    return logging.ERROR if _state["quiet"] else logging.INFO
