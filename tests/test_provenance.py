"""Run provenance (yarn_jax/provenance.py): the environment record matches this process (versions, devices,
commit), and RUN/provenance.json keeps one record per invocation — started, finished or the error that
stopped it — without touching earlier ones."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

import jax
import pytest

import yarn_jax
from yarn_jax.provenance import Invocation, environment, git_commit


def test_environment_describes_this_process():
    env = environment()
    assert env["yarn_jax"] == yarn_jax.__version__
    assert env["packages"]["jax"] == jax.__version__ == importlib.metadata.version("jax")
    assert (env["backend"], env["devices"], env["processes"]) == (jax.default_backend(), jax.device_count(), 1)
    assert env["device_kind"] == jax.devices()[0].device_kind and env["mesh"] is None
    root = Path(yarn_jax.__file__).resolve().parents[1]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert git_commit().split("+")[0] == head.strip()


def test_invocations_accumulate_and_record_how_they_ended(tmp_path):
    first = Invocation(tmp_path, {"model": "a"}).start()
    on_disk = json.loads((tmp_path / "provenance.json").read_text())["invocations"]
    assert len(on_disk) == 1 and on_disk[0]["status"] == "running" and on_disk[0]["finished"] is None
    first.finish()
    second = Invocation(tmp_path, {"model": "b"}).start()
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("disk full")
        except RuntimeError as e:
            second.finish(e)
            raise
    runs = json.loads((tmp_path / "provenance.json").read_text())["invocations"]
    assert [r["inputs"]["model"] for r in runs] == ["a", "b"]
    assert runs[0]["status"] == "finished" and runs[0]["finished"] >= runs[0]["started"]
    assert runs[1]["status"] == "stopped: RuntimeError: disk full"
