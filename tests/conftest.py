"""Shared fixtures: the micro world (built once, cached under .pytest_cache unless MERGE3_HOME is set)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MERGE3_HOME", str(ROOT / ".pytest_cache" / "merge3_home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def micro_world():
    from merge3.world import build_world

    return build_world("micro", progress=False)


@pytest.fixture(scope="session")
def micro_suite(micro_world):
    from merge3.evaluation.lmeval import EvalOptions, TaskSuite

    return TaskSuite(micro_world.task_names, include_path=micro_world.tasks_dir,
                     options=EvalOptions(device="cpu", batch_size=64), cache_dir=micro_world.root)
