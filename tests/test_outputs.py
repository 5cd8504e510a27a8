"""outputs.py: destination guards, staging, locks and atomic writes — each refusal leaves the disk as it
was (compared byte for byte), each lock names its holder, concurrent writers never share a temporary."""

from __future__ import annotations

import threading

import pytest
from conftest import HeldLock, snapshot

from yarn_jax.checkpoint.layout import check_replaceable, checkpoint_kind
from yarn_jax.errors import ConfigError, OutputError
from yarn_jax.outputs import Staging, atomic_write_text, build_once, check_disjoint, lock


def test_check_disjoint_refuses_every_overlap(tmp_path):
    src = tmp_path / "a" / "model"
    src.mkdir(parents=True)
    for dst, message in [(src, "is the source itself"), (tmp_path / "a", "contains the source"),
                         (tmp_path, "contains the source"), (src / "x", "lies inside the source"),
                         (tmp_path / "a" / "model" / ".." / "model", "is the source itself")]:
        with pytest.raises(ConfigError, match=message):
            check_disjoint(src, dst)
    check_disjoint(src, tmp_path / "a" / "model2")  # a sibling whose name extends the source's is fine
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(ConfigError, match="contains the source"):
        check_disjoint(src, tmp_path / "link")
    with pytest.raises(ConfigError, match="contains the source"):
        check_disjoint("gs://b/runs/x/checkpoints", "gs://b/runs/x")
    check_disjoint("gs://b/runs/x/checkpoints", "gs://b/runs/x2")


def test_checkpoint_kind_recognises_only_checkpoints(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (hf / name).write_text("x")
    assert checkpoint_kind(hf) == "hf"
    (hf / "notes.txt").write_text("mine")
    assert checkpoint_kind(hf) is None
    orbax = tmp_path / "orbax"
    (orbax / "10" / "model_config").mkdir(parents=True)
    (orbax / "tokenizer.json").write_text("x")
    assert checkpoint_kind(orbax) == "orbax"
    (orbax / "metrics.jsonl").write_text("{}")
    assert checkpoint_kind(orbax) is None
    (tmp_path / "empty").mkdir()
    assert checkpoint_kind(tmp_path / "empty") == "empty"
    before = snapshot(tmp_path)
    for p in (hf, orbax):
        with pytest.raises(ConfigError, match="not a checkpoint yarn_jax recognises"):
            check_replaceable(p)
    assert snapshot(tmp_path) == before


def test_staging_is_removed_on_failure_and_stale_ones_are_cleaned(tmp_path, caplog):
    target = tmp_path / "out"
    stale = tmp_path / ".out.staging-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)  # left by a killed run
    (tmp_path / ".other.staging-1234").mkdir()  # another target's: not ours to touch
    staging = Staging(target)
    with pytest.raises(RuntimeError):
        with staging as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.staging-1234"]
    assert "removing" in caplog.text and str(stale) in caplog.text
    staging = Staging(target)
    with staging as tmp:
        (tmp / "done").write_text("x")
        staging.commit()
    assert (target / "done").read_text() == "x"
    staging = Staging(target)
    with pytest.raises(ConfigError, match="appeared while this command ran"):
        with staging as tmp:
            staging.commit()  # not asked to replace: the existing target stays


def test_lock_refuses_a_second_holder_naming_its_pid(tmp_path):
    run = tmp_path / "run"
    with HeldLock(run) as holder:
        with pytest.raises(OutputError, match=rf"in use by another yarn_jax command \(pid {holder.pid} on "):
            with lock(run, "run directory"):
                pass
    with lock(run):  # a killed holder's lock is free again (the kernel drops it)
        pass
    assert not run.exists() and not list(tmp_path.iterdir())  # nothing created, the lock file removed


def test_atomic_writes_from_many_threads_never_share_a_temporary(tmp_path):
    path = tmp_path / "summary.json"
    errors = []

    def write(i):
        try:
            for _ in range(50):
                atomic_write_text(path, str(i) * 1000)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = path.read_text()
    assert len(text) == 1000 and len(set(text)) == 1  # one writer's whole content, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_build_once_builds_atomically_and_keeps_a_finished_build(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "file").write_text("v1")

    assert (build_once(tmp_path / "asset", build) / "file").read_text() == "v1"
    build_once(tmp_path / "asset", build)
    assert len(calls) == 1

    def failing(tmp):
        (tmp / "part").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        build_once(tmp_path / "other", failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset"]
