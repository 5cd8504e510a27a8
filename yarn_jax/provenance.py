"""Where a result came from: the code (yarn_jax version, git commit), the libraries (jax, jaxlib, libtpu,
flax, orbax, transformers), the machine (backend, device kind and count, processes, mesh), the resolved
inputs and when it ran. Each run directory keeps RUN/provenance.json: one record per invocation of the
command on it (a resumed run appends one), with its start and end time and how it ended.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint", "transformers",
            "tokenizers", "torch")


def now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def git_commit() -> str | None:
    """The commit of the source tree yarn_jax runs from ("+dirty" with uncommitted changes), or None when
    it is not a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def environment(sharder=None) -> dict:
    """The code, libraries and devices of this process (call after jax's backend is chosen)."""
    import jax

    from yarn_jax import __version__

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    devices = jax.devices()
    return {"yarn_jax": __version__, "git_commit": git_commit(), "python": platform.python_version(),
            "packages": versions, "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "devices": jax.device_count(), "processes": jax.process_count(),
            "mesh": None if sharder is None else dict(sharder.mesh.shape)}


class Invocation:
    """This command's record in RUN/provenance.json: written when the run starts (`start`), completed when
    it ends (`finish`: "finished", or the error that stopped it). Earlier invocations are kept."""

    def __init__(self, run_dir, inputs: dict, sharder=None):
        self.path = Path(run_dir) / "provenance.json"
        self.record = {"started": now(), "finished": None, "status": "running", "command": sys.argv,
                       **environment(sharder), "inputs": inputs}
        self._index: int | None = None

    def _write(self) -> None:
        from yarn_jax.rundir import write_json_atomic

        previous = []
        if self.path.exists():
            try:
                previous = json.loads(self.path.read_text()).get("invocations", [])
            except (OSError, ValueError, AttributeError):
                previous = []  # a damaged record is replaced, never a reason to stop the run
        if self._index is None:
            self._index = len(previous)
            previous.append(self.record)
        else:
            previous[self._index] = self.record
        write_json_atomic(self.path, {"invocations": previous})

    def start(self) -> "Invocation":
        self._write()
        return self

    def finish(self, error: BaseException | None = None) -> None:
        self.record.update(finished=now(), status="finished" if error is None else
                           f"stopped: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
        self._write()
