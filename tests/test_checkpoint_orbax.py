"""yarn_jax (orbax) checkpoints: round trip, step selection, incomplete steps, loading through the API."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_params, tiny_hf_dict

import yarn_jax
from yarn_jax.checkpoint import load_checkpoint, save_orbax_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError, ConfigError
from yarn_jax.model import model_from_params

ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}


def small_tokenizer(directory):
    """A word-level tokenizer whose ids (0..3) fit the tiny models' vocabulary of 97."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "To": 1, "be": 2, "or": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture()
def saved(tmp_path):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(ROPE, max_pos=64, tie=True))
    p1, p2 = random_params(cfg, seed=1), random_params(cfg, seed=2)
    root = tmp_path / "ckpt"
    save_orbax_checkpoint(root, 100, cfg, p1, tokenizer_dir=small_tokenizer(tmp_path / "tok"))
    save_orbax_checkpoint(root, 200, cfg, p2)
    return root, cfg, p1, p2


def test_round_trip_latest_and_given_step(saved):
    root, cfg, p1, p2 = saved
    cfg_back, params = load_checkpoint(root)
    assert cfg_back == cfg and cfg_back.rope.rope_type == "yarn"
    assert params.keys() == p2.keys() and all(np.array_equal(params[k], p2[k]) for k in p2)
    _, params = load_checkpoint(root / "100")
    assert all(np.array_equal(params[k], p1[k]) for k in p1)


def test_relative_paths_load(saved, monkeypatch):
    """orbax refuses relative paths when reading array metadata; a relative root or step must still load."""
    root, cfg, p1, p2 = saved
    monkeypatch.chdir(root.parent)
    _, params = load_checkpoint(root.name)
    assert all(np.array_equal(params[k], p2[k]) for k in p2)
    _, params = load_checkpoint(f"{root.name}/100")
    assert all(np.array_equal(params[k], p1[k]) for k in p1)


def test_incomplete_step_is_ignored(saved):
    root, cfg, p1, p2 = saved
    (root / "300.orbax-checkpoint-tmp-1700000000").mkdir()  # what an interrupted orbax save leaves
    _, params = load_checkpoint(root)
    assert all(np.array_equal(params[k], p2[k]) for k in p2)
    with pytest.raises(CheckpointError, match=r"no step 300; complete steps are \[100, 200\]"):
        load_checkpoint(root, 300)


def test_from_pretrained_gives_the_saved_models_logits_and_tokenizer(saved):
    root, cfg, _, p2 = saved
    ids = np.arange(40, dtype=np.int32)[None] % cfg.vocab_size
    pm = yarn_jax.from_pretrained(root)
    np.testing.assert_allclose(pm.logits(ids), model_from_params(cfg, p2)(ids), atol=1e-5)  # jit vs eager
    assert pm.tokenizer().encode("To be").ids == [1, 2]
    assert yarn_jax.from_pretrained(root / "100").tokenizer().encode("To be").ids == [1, 2]


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, assets):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(ROPE, max_pos=64, tie=True))
    save_orbax_checkpoint(tmp_path / "ckpt", 1, cfg, random_params(cfg), tokenizer_dir=assets["smollm2"])
    with pytest.raises(ConfigError, match="emits ids up to 49151, but the model's embedding has vocab_size=97"):
        yarn_jax.from_pretrained(tmp_path / "ckpt").tokenizer()
