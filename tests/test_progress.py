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
