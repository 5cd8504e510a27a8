"""Progress reports (yarn_jax/progress.py): plain lines when the stream is not a terminal — the first unit,
then one per interval, the last — with count, percentage, elapsed time, ETA and the latest figures; nothing
when disabled; and a real train.py run logging its steps as lines into a pipe."""

from __future__ import annotations

import io
import re

import pytest

from yarn_jax.progress import Progress


def test_plain_lines_first_every_interval_and_last():
    out = io.StringIO()  # not a terminal
    with Progress(10, "train", unit="steps", stream=out, every=0.0) as bar:
        for i in range(10):
            bar.update(1, loss=f"{10 - i:.1f}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # every 0 s: each update
    assert lines[0].startswith("train: 1/10 steps (10%)") and "ETA" in lines[0] and "loss=10.0" in lines[0]
    assert lines[-1].startswith("train: 10/10 steps (100%)") and "ETA" not in lines[-1] and "loss=1.0" in lines[-1]


def test_lines_are_rate_limited_and_resume_counts_from_initial():
    out = io.StringIO()
    bar = Progress(100, "cells", unit="forwards", initial=40, stream=out, every=3600.0)
    for _ in range(30):
        bar.update(1)
    bar.close()  # an unfinished run still reports where it stopped
    lines = out.getvalue().splitlines()
    assert [re.match(r"cells: (\d+)/100", x).group(1) for x in lines] == ["41", "70"]


def test_disabled_and_off_print_nothing(monkeypatch):
    out = io.StringIO()
    with Progress(3, "x", stream=out, every=0.0, enabled=False) as bar:
        bar.update(3)
    monkeypatch.setenv("YARN_JAX_PROGRESS", "off")
    with Progress(3, "x", stream=out, every=0.0) as bar:
        bar.update(3)
    assert out.getvalue() == ""
    monkeypatch.setenv("YARN_JAX_PROGRESS", "loud")
    with pytest.raises(ValueError, match="YARN_JAX_PROGRESS"):
        Progress(3, "x", stream=out)


def test_a_slow_unit_still_gets_a_line_every_interval_and_nothing_is_printed_twice():
    import time

    out = io.StringIO()
    with Progress(2, "cells", unit="cells", stream=out, every=0.2) as bar:
        time.sleep(1.1)  # one slow unit: a compile, a 16k forward
        bar.update(1)
        bar.update(1)
        bar.update(0)  # a cell ending with nothing left to count reports nothing new
    lines = out.getvalue().splitlines()
    waiting = [x for x in lines if x.startswith("cells: 0/2 cells (0%)")]
    assert len(waiting) >= 3, lines  # ~5 heartbeats at 0.2 s; 3 leaves room for a loaded machine
    assert len([x for x in lines if x.startswith("cells: 2/2")]) == 1, lines


def test_one_long_step_shows_its_clock_and_its_end():
    import time

    from yarn_jax.progress import working

    out = io.StringIO()
    with working("logit check", stream=out, every=0.2):
        time.sleep(0.7)
    lines = out.getvalue().splitlines()
    assert len([x for x in lines if x.startswith("logit check: 0/1 step (0%)")]) >= 2, lines
    assert lines[-1].startswith("logit check: 1/1 step (100%)")


def test_a_real_eval_in_a_pipe_reports_before_its_first_cell_ends(assets, tmp_path):
    """`yarn-jax eval 2> log` with stdout on a terminal: with a 1 s interval, lines arrive while the first
    cell (compile + forward) is still running — a log is never silent for longer than the interval (30 s
    by default); no message is wrapped across lines in the log; and the terminal gets one short line
    saying where the results are, not the JSON record."""
    import os
    import pty
    import subprocess
    import sys

    env = {**os.environ, "YARN_JAX_PROGRESS_EVERY": "1"}
    out = tmp_path / ("a-long-directory-name-" * 4) / "run"  # a path that a 100-column console would wrap
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "yarn_jax", "eval", "--methods", "none", "--lengths", "2048",
                             "--position-buckets", "4", "--out", str(out)], env=env, stdout=slave,
                            stderr=subprocess.PIPE, text=True)
    os.close(slave)
    _, err = proc.communicate(timeout=600)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.returncode == 0, err[-2000:]
    beats = re.findall(r"^perplexity 1/1: .*: 0/2048 tokens \(0%\), (\d+)s elapsed", err, re.M)
    assert beats and int(beats[0]) <= 5, err[-2000:]  # the first line at ~1 s (5: room for a loaded machine)
    assert f"results in {out}" in err.splitlines()[0]  # the run's first line, whole
    assert terminal.decode().strip() == f"results in {out} (piped, this command prints them as one JSON line)"


def test_a_short_step_adds_nothing_to_a_log():
    from yarn_jax.progress import working

    out = io.StringIO()
    with working("compile", stream=out, every=30.0):
        pass
    assert out.getvalue() == ""
