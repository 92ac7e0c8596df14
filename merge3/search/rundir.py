"""A search's run directory: what it holds, and every read and write of it.

    config.yaml          the resolved config (absolute paths, every default filled in)
    meta.json            config digest, genome names, items per task, anchors, calibration used
    anchors.json         the anchor items per task (when the fitness uses anchors)
    calibration/         the calibration, when ``fitness.calibration: auto``
    evaluations.jsonl    append-only, fsynced: one line per evaluated candidate
    verified.jsonl       append-only, fsynced: the best candidates re-scored on every item after the search
    progress.json        generation, evaluations, done, front so far (atomic replace; read by ``status``)
    result.json          the final front, written when the search is done
    status.png           written by ``merge3 status``
    .lock                held (flock) by the process running the search

Every file but the logs is replaced atomically (written to a temporary sibling, fsynced, renamed), so a crash
never leaves one half-written; the logs are appended a fsynced line at a time, and a line cut by a crash is
removed on the next resume (with a message). Any other damaged line is an error naming the file and line.
``status`` and ``export`` read a run directory without taking its lock.

A run directory holds data only (YAML read with ``safe_load`` and no aliases, JSON, safetensors in the
calibration): resuming, exporting or showing one executes nothing from it. A ``checkpoint.pkl`` left by an older merge3 is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

from ..files import atomic_write, write_error
from ..yamlfile import load_yaml_text
from .config import SearchConfig

CONFIG = "config.yaml"
META = "meta.json"
ANCHORS = "anchors.json"
SPLIT = "split.json"
LOG = "evaluations.jsonl"
VERIFIED = "verified.jsonl"
PROGRESS = "progress.json"
RESULT = "result.json"
CALIBRATION = "calibration"


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed {what} ({exc})") from None


class RunDirectoryLocked(FileExistsError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive flock on RUN_DIR/.lock; released by the OS if the process dies (even by SIGKILL)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunDirectoryLocked(f"run directory {self.path.parent} is in use by another merge3 process "
                                     f"({holder}); wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class DamagedLog(ValueError):
    """A line of a run directory's log is not a record (named: file and line)."""


class EvalLog:
    """Append-only JSONL of evaluations; each line is flushed and fsynced before the search goes on."""

    required = ("generation", "index")

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self, repair: bool = False) -> list[dict]:
        """The records in line order. A last line without its newline is an append cut by a crash: with
        ``repair`` it is cut off (and said so on stderr), else ignored. Any other damaged line is an error naming
        the file and line: it is never dropped silently (a candidate would be missing from the results)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and repair:
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
            print(f"merge3: {self.path}: removed an incomplete last line (a write cut by a crash); its candidate "
                  "is scored again", file=sys.stderr, flush=True)
        out = []
        for n, line in enumerate(data[:end].split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DamagedLog(f"{self.path}, line {n}: damaged record ({getattr(exc, 'msg', exc)}); restore the "
                                 "file, or delete that line to have its candidate scored again") from None
            if not isinstance(rec, dict) or not all(k in rec for k in self.required):
                raise DamagedLog(f"{self.path}, line {n}: not a record (needs {', '.join(self.required)}); "
                                 "restore the file, or delete that line to have its candidate scored again")
            out.append(rec)
        return out

    def append(self, rec: dict) -> None:
        line = json.dumps(rec, sort_keys=True) + "\n"
        try:
            with open(self.path, "ab") as f:
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a line cut here is removed by the next resume (see read)
            raise write_error(self.path, exc) from None


class RunDir:
    """Paths and reads/writes of one run directory (no lock taken: see :class:`RunLock`)."""

    def __init__(self, path):
        self.path = Path(path)
        self.log = EvalLog(self.path / LOG)
        self.verified_log = EvalLog(self.path / VERIFIED)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    def require(self) -> None:
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a merge3 run directory (no {CONFIG})")

    # ---------------------------------------------------------------- files

    def write_config(self, cfg: SearchConfig) -> None:
        import yaml

        class Plain(yaml.SafeDumper):  # values written out: config.yaml is read back without aliases
            def ignore_aliases(self, data):
                return True

        atomic_write(self.path / CONFIG, yaml.dump(cfg.to_dict(), Dumper=Plain, sort_keys=False))

    def read_config(self) -> SearchConfig:
        self.require()
        path = self.path / CONFIG
        try:
            raw = load_yaml_text(path.read_text(), str(path))
            return SearchConfig.from_dict(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid merge3 run config ({str(exc).splitlines()[0]})") from None

    def read_meta(self) -> dict:
        p = self.path / META
        return read_json(p, "run metadata") if p.exists() else {}

    def write_meta(self, meta: dict) -> None:
        write_json(self.path / META, meta)

    def read_anchor_items(self) -> dict[str, list[str]] | None:
        p = self.path / ANCHORS
        return read_json(p, "anchors file") if p.exists() else None

    def write_anchor_items(self, items: dict[str, list[str]]) -> None:
        atomic_write(self.path / ANCHORS, json.dumps(items, indent=1, sort_keys=True))

    def read_split(self) -> dict[str, list[str]] | None:
        """The held-out test items per task (``fitness.test_fraction``), or None."""
        p = self.path / SPLIT
        return read_json(p, "test split file") if p.exists() else None

    def write_split(self, test_items: dict[str, list[str]]) -> None:
        atomic_write(self.path / SPLIT, json.dumps(test_items, indent=1, sort_keys=True))

    def read_progress(self) -> dict:
        p = self.path / PROGRESS
        return read_json(p, "progress file") if p.exists() else {}

    def write_progress(self, progress: dict) -> None:
        write_json(self.path / PROGRESS, progress)

    def write_result(self, result: dict) -> None:
        write_json(self.path / RESULT, result)

    def setup_unfinished(self) -> bool:
        """Created, but its set-up (auto calibration, anchors, meta.json) never finished and nothing was evaluated:
        a new ``search`` may take it over with a corrected config."""
        return self.exists() and not (self.path / META).exists() and not (self.path / LOG).exists()

    def is_done(self) -> bool:
        return (self.path / RESULT).exists()

    def records(self, repair: bool = False) -> list[dict]:
        """The evaluation log, one record per candidate (the last line wins), in (generation, index) order."""
        recs = {(r["generation"], r["index"]): r for r in self.log.read(repair=repair)}
        return sorted(recs.values(), key=lambda r: (r["generation"], r["index"]))

    def verified(self) -> dict[tuple[int, int], dict]:
        """(generation, index) -> the candidate's scores on every item, for the candidates verified so far."""
        return {(r["generation"], r["index"]): r for r in self.verified_log.read()}


def read_run(run_dir) -> tuple[SearchConfig, dict, list[dict]]:
    """A run directory's config, meta and evaluation records (one per candidate, in order)."""
    rd = RunDir(run_dir)
    return rd.read_config(), rd.read_meta(), rd.records()
