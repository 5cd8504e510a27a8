"""Hostile inputs through the public commands and the Python API: each refused in one line naming the
field, flag or argument, before any long compute, with every input file unchanged (sha256 snapshots).
(The start of issue 37's battery: the classes fixed so far — a data-loss path, a silent wrong result and
raw tracebacks.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import snapshot
from yarn_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "yarn_jax", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _one_line(proc, code: int = 2) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny HF checkpoint of our own (float32), with the bundled tokenizer files."""
    from tests.conftest import random_params, tiny_hf_dict
    from yarn_jax import assets
    from yarn_jax.checkpoint import save_hf_checkpoint
    from yarn_jax.config import LlamaConfig

    d = tiny_hf_dict(None, vocab=49152, hidden=32, heads=4, kv_heads=2, head_dim=8)
    d["bos_token_id"], d["eos_token_id"] = 1, 2
    cfg = LlamaConfig.from_hf_dict(d)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf_checkpoint(path, cfg, random_params(cfg, seed=1), tokenizer_dir=str(assets.smollm2()))
    return path


def test_save_pretrained_onto_its_own_source_is_refused_and_the_source_kept(tiny):
    """The data-loss path: the API wrote bf16-rounded weights over the float32 directory it loaded."""
    import yarn_jax

    before = snapshot(tiny)
    model = yarn_jax.from_pretrained(tiny)
    for dst in (tiny, tiny / "inside", tiny.parent):
        with pytest.raises(ConfigError, match="save_pretrained destination"):
            model.save_pretrained(dst, dtype="bfloat16")
    assert snapshot(tiny) == before


def test_save_pretrained_with_an_unknown_dtype_is_one_line(tiny, tmp_path):
    import yarn_jax

    model = yarn_jax.from_pretrained(tiny)
    with pytest.raises(ConfigError, match=r"dtype 'int8': choose float32, bfloat16, float16"):
        model.save_pretrained(tmp_path / "out", dtype="int8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stop, message", [
    ("", "an empty string is found at once"),
    (["\n", ""], "an empty string is found at once"),
    (1.5, "neither a string nor a token id"),
    (True, "neither a string nor a token id"),
    (10**9, "outside \\[0, vocab_size=49152\\)"),
])
def test_generate_refuses_stops_that_would_silently_change_the_completion(tiny, stop, message):
    import yarn_jax

    model = yarn_jax.from_pretrained(tiny)
    with pytest.raises(ConfigError, match=message):
        model.generate("Once upon a time", max_new_tokens=4, stop=stop)


@pytest.mark.parametrize("flag, value", [("--max-abs-logit", "nan"), ("--max-abs-logit", "-1"),
                                         ("--max-kl", "inf"), ("--max-kl", "0"), ("--max-shard-gb", "nan"),
                                         ("--max-shard-gb", "-5")])
def test_convert_thresholds_must_be_finite_and_positive(tiny, tmp_path, flag, value):
    """A nan threshold rejected a bit-exact conversion (and left DST.rejected); now refused before work."""
    before = snapshot(tiny)
    line = _one_line(_run("convert", str(tiny), str(tmp_path / "out"), flag, value))
    assert line.startswith(f"error: {flag} must be a finite number > 0")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.rejected").exists()
    assert snapshot(tiny) == before


@pytest.mark.parametrize("verb", ["eval", "train"])
def test_a_negative_seed_is_one_line(tiny, tmp_path, verb):
    line = _one_line(_run(verb, "--model", str(tiny), "--seed", "-1", "--out", str(tmp_path / "run")))
    assert "seed (from --seed)" in line and "greater than or equal to 0" in line
    assert not (tmp_path / "run").exists()

