"""fingerprint.py: the identity of a model's files follows their bytes (not their paths or times), sees a
re-exported tensor in a multi-GB-style file, and describes what changed."""

from __future__ import annotations

import os
import shutil

import numpy as np
from conftest import random_params, tiny_hf_dict

from yarn_jax.checkpoint import save_hf_checkpoint, save_orbax_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.fingerprint import FULL_LIMIT, describe_change, file_digest, ids_digest, model_identity


def test_digest_follows_the_bytes_not_the_path_or_the_time(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(5000))
    b = tmp_path / "b.bin"
    shutil.copy(a, b)
    os.utime(b, (1, 1))
    assert file_digest(a) == file_digest(b)
    data = bytearray(a.read_bytes())
    data[4321] ^= 1
    b.write_bytes(bytes(data))
    assert file_digest(a) != file_digest(b)


def test_large_safetensors_digest_sees_every_tensor_rewritten(tmp_path):
    """Above FULL_LIMIT the content is sampled; a tensor given new values changes at its edges, which are
    always read, wherever it lies in the file."""
    from safetensors.numpy import save_file

    n = FULL_LIMIT // 4 // 40 + 1  # 40 tensors, > FULL_LIMIT in all
    tensors = {f"t{i:02d}": np.zeros(n, np.float32) for i in range(40)}
    f = tmp_path / "model.safetensors"
    save_file(tensors, str(f))
    assert f.stat().st_size > FULL_LIMIT
    before = file_digest(f)
    tensors["t23"] = tensors["t23"] + 1.0  # a re-exported tensor (all its values change)
    save_file(tensors, str(f))
    assert file_digest(f) != before


def test_model_identity_and_what_changed(tmp_path):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(None))
    hf = save_hf_checkpoint(tmp_path / "hf", cfg, random_params(cfg))
    first = model_identity(str(hf))
    assert first["kind"] == "hf" and set(first["files"]) == {"config.json", "model.safetensors"}
    copy = tmp_path / "copy"
    shutil.copytree(hf, copy)
    assert model_identity(str(copy)) == first  # the same bytes elsewhere are the same model
    save_hf_checkpoint(hf, cfg, random_params(cfg, seed=5))
    assert describe_change(first, model_identity(str(hf))) == "changed: model.safetensors"
    root = tmp_path / "ckpt"
    save_orbax_checkpoint(root, 10, cfg, random_params(cfg))
    one = model_identity(str(root))
    assert one["kind"] == "orbax" and one["step"] == 10 and model_identity(str(root / "10")) == one
    save_orbax_checkpoint(root, 20, cfg, random_params(cfg))
    assert describe_change(one, model_identity(str(root))) == "its latest step was 10, it is now 20"
    assert describe_change(first, one) == "its kind changed from hf to orbax"


def test_ids_digest_tells_documents_apart():
    assert ids_digest(np.array([1, 2, 3])) == ids_digest(np.array([1, 2, 3], np.int32))
    assert ids_digest(np.array([1, 2, 3])) != ids_digest(np.array([1, 2, 4]))
