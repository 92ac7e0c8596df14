"""Writing files: atomically, with the usual permissions, and one-line errors naming the file.

``atomic_write`` writes a temporary sibling, fsyncs and renames it; on any failure (disk full, read-only file
system) the temporary file is removed and the error names the file that was being written. ``usual_mode`` gives a
file written by a library that creates it private (safetensors writes 0600) the mode an ordinary ``open`` would
(0644 under the default umask).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def write_error(path, exc: BaseException) -> OSError:
    """An OSError naming ``path``, for a failure ``exc`` while writing it."""
    code = getattr(exc, "errno", None) or errno.EIO
    why = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return OSError(code, f"cannot write {path}: {why}")


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(old)
    return old


def usual_mode(*paths) -> None:
    """chmod each file to 0666 & ~umask (what ``open`` creates), each directory to 0777 & ~umask."""
    mask = _umask()
    for p in paths:
        p = Path(p)
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write(path, data: bytes | str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, exc) from None
    try:  # make the rename durable too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def publish_dir(root, build, marker: str) -> None:
    """Makes the folder ``root`` appear whole or not at all: ``build(tmp)`` fills a temporary sibling, which is
    then renamed into place (an empty ``root`` is replaced). When another process published ``root`` meanwhile
    (its ``marker`` file exists), ours is discarded: both built the same thing."""
    import shutil

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if (root / marker).is_file():
            return
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
