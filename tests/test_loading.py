"""Checkpoints load straight into shards: slices read from safetensors equal the full conversion, every
format's Source gives the same parameters and blocks, every format loads with the rules' shardings, and a
real model runs sharded."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import random_params, tiny_hf_dict, torch_llama, torch_logits
from yarn_jax.checkpoint import load_checkpoint, open_checkpoint, save_hf_checkpoint, save_orbax_checkpoint
from yarn_jax.checkpoint.layout import params_to_hf, tensor_map
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError
from yarn_jax.loading import load_model
from yarn_jax.model import model_from_params
from yarn_jax.sharding import MeshConfig, Sharder, make_mesh
from yarn_jax.sharding.params import tree_shardings

CFG = LlamaConfig.from_hf_dict(tiny_hf_dict(hidden=64, vocab=128, heads=4, kv_heads=2))


class Recording(np.ndarray):
    """A numpy array that records the index of every read (what a safetensors slice would be asked for)."""

    def __getitem__(self, index):
        self.reads.append(index)
        return np.asarray(self).__getitem__(index)


def _slices(n, parts):
    step = n // parts
    return [slice(i * step, (i + 1) * step) for i in range(parts)]


def test_layout_reads_only_the_rows_and_columns_of_a_block():
    params = random_params(CFG)
    hf = params_to_hf(CFG, params)
    for t in tensor_map(CFG):
        name = t.name.format(i=1)
        full = t.to_ours(hf[name])
        # head_dim (split out of heads*head_dim) stays whole under the rules; cut it is tested below
        head_dim = {i for i, p in enumerate(t.perm) if len(t.view) == 3 and p > 0 and t.view[p] == CFG.head_dim}
        choices = [[slice(None)] if i in head_dim else _slices(n, 2) + [slice(None)] for i, n in enumerate(full.shape)]
        for index in itertools.product(*choices):
            rec = hf[name].view(Recording)
            rec.reads = []
            block = t.read(rec, index)
            np.testing.assert_array_equal(block, full[index])
            (hf_index,) = rec.reads
            read = np.prod([len(range(*s.indices(n))) for s, n in zip(hf_index, t.hf_shape)])
            assert read == block.size, (t.name, index)
    # a partial head_dim slice (never produced by the rules) still reads correctly
    q = next(t for t in tensor_map(CFG) if t.path == ("layers", "q_proj"))
    idx = (slice(0, 32), slice(1, 3), slice(4, 9))
    np.testing.assert_array_equal(q.read(hf["model.layers.0.self_attn.q_proj.weight"], idx),
                                  q.to_ours(hf["model.layers.0.self_attn.q_proj.weight"])[idx])


def load_sharded(path, sharder):
    with open_checkpoint(path) as source:
        return source.config, load_model(source, sharder=sharder)


@pytest.mark.parametrize("fmt", ["hf", "gguf", "orbax"])
def test_every_source_reads_the_same_parameters_and_blocks(tmp_path, assets, fmt):
    """The one read protocol: each format's whole parameters equal the HF directory's (read through
    safetensors directly), and every block a mesh would ask for equals the same block of the whole."""
    from safetensors.numpy import load_file

    hf_dir = assets["smollm2"]
    if fmt == "orbax":
        cfg, params = load_checkpoint(hf_dir)
        save_orbax_checkpoint(tmp_path / "ck", 3, cfg, params)
    path = {"hf": hf_dir, "gguf": assets["smollm2_gguf"], "orbax": tmp_path / "ck"}[fmt]
    truth = load_file(str(hf_dir / "model.safetensors"))
    with open_checkpoint(path) as source:
        assert source.kind == fmt and source.config.to_hf_dict() == load_checkpoint(hf_dir)[0].to_hf_dict()
        for t in source.layouts():
            whole = source.read(t)
            n = source.config.num_hidden_layers
            want = (np.stack([t.to_ours(truth[t.name.format(i=i)]) for i in range(n)]) if t.per_layer
                    else t.to_ours(truth.get(t.name, truth["model.embed_tokens.weight"])))
            np.testing.assert_array_equal(whole, want, err_msg=t.name)
            for index in [tuple(slice(0, max(1, d // 2)) for d in whole.shape),
                          tuple(slice(d // 3, d) for d in whole.shape)]:
                np.testing.assert_array_equal(source.read(t, index), whole[index], err_msg=f"{t.name} {index}")


def _check_loaded(model, cfg, params, sharder):
    graphdef, state = nnx.split(model)
    shardings = dict(nnx.to_flat_state(tree_shardings(state, sharder)))
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        assert value.sharding == shardings[path].get_value(), path
        np.testing.assert_array_equal(np.asarray(value), params[tuple(path)])


@pytest.mark.parametrize("fmt", ["hf", "orbax", "orbax_step"])
def test_every_format_loads_into_the_rules_shardings(tmp_path, fmt):
    params = random_params(CFG, seed=4)
    if fmt == "hf":
        path = save_hf_checkpoint(tmp_path / "hf", CFG, params)
    else:
        save_orbax_checkpoint(tmp_path / "ck", 7, CFG, params)
        path = tmp_path / "ck" / ("7" if fmt == "orbax_step" else "")
    sharder = Sharder(make_mesh(MeshConfig(preset="fsdp_tensor")))
    cfg, model = load_sharded(path, sharder)
    assert cfg.to_hf_dict() == CFG.to_hf_dict()
    _check_loaded(model, cfg, params, sharder)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_sharded(tmp_path / "nowhere", Sharder(make_mesh(MeshConfig(preset="fsdp"))))


def test_smollm2_loads_sharded_and_runs_as_exactly_as_one_device(assets):
    """The real model from its HF directory (sliced reads) and from its GGUF file (per-tensor dequant) on
    8 devices (fsdp=4 x sequence=2): same values as the unsharded loader. Logits on 256 tokens: over 30
    float32 layers, sharded contractions round differently from one device's (2-3e-5 relative apart,
    measured), so both are held to the float64 truth (transformers in double precision): the sharded
    model must be as close to it as the single-device model, within a factor 1.5."""
    import json

    cfg, params = load_checkpoint(assets["smollm2"])
    sharder = Sharder(make_mesh(MeshConfig(preset="fsdp_sequence")))
    _, model = load_sharded(assets["smollm2"], sharder)
    _check_loaded(model, cfg, params, sharder)
    _, from_gguf = load_sharded(assets["smollm2_gguf"], sharder)
    _check_loaded(from_gguf, cfg, params, sharder)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 256)), jnp.int32)
    graphdef, state = nnx.split(model)

    assert model.sharder is sharder  # the loaded model runs on the mesh it was loaded onto
    sharded = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids), in_shardings=(tree_shardings(state, sharder), sharder.named(("batch", "length"), ids.shape)),
                      out_shardings=sharder.replicated())(state, ids)
    single = model_from_params(cfg, params)(ids)
    hf_dict = json.loads((assets["smollm2"] / "config.json").read_text())
    truth = torch_logits(torch_llama(hf_dict, params_to_hf(cfg, params)), np.asarray(ids), float64=True)
    scale = np.abs(truth).max()
    single_err = np.abs(np.asarray(single) - truth).max() / scale
    sharded_err = np.abs(np.asarray(sharded) - truth).max() / scale
    assert single_err < 1e-4
    assert sharded_err <= 1.5 * single_err, (sharded_err, single_err)
