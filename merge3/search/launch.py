"""``merge3 launch CONFIG --address http://HEAD:8265``: the same search, submitted to a Ray cluster as a job.

The config is checked locally for keys, types and ranges (its model paths are the cluster's, so they are
checked there, by the job, before it evaluates anything). The job runs ``merge3 search`` on the head node
with the config uploaded as the job's working directory; ``--run-dir`` should be on storage the head node
keeps (default ``runs/<name>`` under the job's directory). Follow it with ``ray job logs --follow ID``.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from pathlib import Path


def launch(config_path, address: str, run_dir=None, wait: bool = False) -> str:
    from . import config as C

    p = Path(config_path)
    raw = C.read_yaml(p)
    cfg = C.normalize(raw, name=p.stem, base_dir=p.resolve().parent)  # keys/types/ranges, no disk checks
    if not address:
        raise ValueError("--address is required (the cluster's job address, e.g. http://127.0.0.1:8265)")
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # connection refused, bad address
        raise ValueError(f"cannot reach the Ray job server at {address}: {exc}") from None
    run_dir = run_dir or f"runs/{cfg.name}"
    with tempfile.TemporaryDirectory(prefix="merge3-launch-") as tmp:
        shutil.copy(p, Path(tmp) / "search.yaml")
        entry = f"python -m merge3.cli search search.yaml --run-dir {shlex.quote(str(run_dir))} --address auto"
        job_id = _submit(client, entrypoint=entry, runtime_env={
            "working_dir": tmp, "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
            metadata={"merge3_config": p.name, "merge3_run_dir": str(run_dir)})
    if wait:
        while client.get_job_status(job_id).is_terminal() is False:
            time.sleep(2)
    return job_id


def _submit(client, patience_s: float = 60.0, **job) -> str:
    """Submits the job; a cluster that has just started answers "No available agent" until its job agent is
    up, so that answer is retried for up to ``patience_s`` seconds."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
