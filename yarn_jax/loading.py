"""A checkpoint (any format, through `checkpoint.Source`) loaded as a Llama: on one device, or straight into
its shards over a mesh.

Sharded: every parameter is built with `jax.make_array_from_callback`, whose callback is asked only for
the blocks this process's devices hold — an HF directory reads just those rows/columns from the
safetensors files, so the whole model never sits on one device or in one host buffer; a GGUF parameter
is dequantized once on the host and cut into blocks; a yarn_jax (orbax) checkpoint restores each
process's shards natively. Every parameter is checked to be finite (a reduction over its shards).
"""

from __future__ import annotations

import jax
from flax import nnx

from yarn_jax.checkpoint import Source
from yarn_jax.checkpoint.layout import check_finite
from yarn_jax.config import LlamaConfig
from yarn_jax.model import Llama, abstract_model, as_dtype, model_from_params, model_params, state_from_flat
from yarn_jax.sharding.params import tree_shardings
from yarn_jax.sharding.rules import Sharder


def load_model(source: Source, config: LlamaConfig | None = None, *, sharder: Sharder | None = None,
               param_dtype="float32", **settings) -> Llama:
    """The Llama of an open checkpoint. `config`: the source's, or one that differs only in its rope (e.g.
    with a rope override); `settings` (dtype, attention_backend, remat, splash_blocks) go to `Llama`, which
    runs on `sharder` when one is given."""
    cfg = config or source.config
    pdt = as_dtype(param_dtype)
    if sharder is None:
        params = {t.path: source.read_checked(t, pdt) for t in source.layouts()}
        return model_from_params(cfg, params, param_dtype=pdt, **settings)
    graphdef, abstract = nnx.split(abstract_model(cfg, param_dtype=pdt, sharder=sharder, **settings))
    shardings = {tuple(p): s.get_value() for p, s in nnx.to_flat_state(tree_shardings(abstract, sharder))}
    shapes = {tuple(p): tuple(v.shape) for p, v in nnx.to_flat_state(abstract)}
    if source.restore_sharded is not None:
        arrays = source.restore_sharded({k: jax.ShapeDtypeStruct(shapes[k], pdt, sharding=s)
                                         for k, s in shardings.items()})
    else:
        arrays = {t.path: jax.make_array_from_callback(shapes[t.path], shardings[t.path],
                                                       lambda index, t=t: source.read(t, index, pdt))
                  for t in source.layouts()}
    module = nnx.merge(graphdef, state_from_flat(abstract, arrays))
    for name, value in model_params(module).items():
        check_finite(value, "/".join(name), source.path)
    return module
