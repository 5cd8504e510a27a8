"""The project's real programs, lowered with abstract inputs for a target mesh: the train step (forward,
backward, clipping, AdamW, donated state) and the evaluation scorer. Parameters never exist: their
shapes come from `nnx.eval_shape`, their shardings from the logical rules, exactly as train.py / eval.py
would place them."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from yarn_jax.attention import resolve_backend
from yarn_jax.config import LlamaConfig
from yarn_jax.evaluation.perplexity import PerplexityScorer
from yarn_jax.model import abstract_model
from yarn_jax.rope import rope_frequencies
from yarn_jax.sharding.mesh import MeshConfig
from yarn_jax.sharding.params import tree_shardings
from yarn_jax.sharding.rules import Sharder
from yarn_jax.training.step import TrainStep, batch_sharding, make_optimizer

BATCH_KEYS = ("input_ids", "segment_ids", "positions")  # what training/data.py's rows carry


@dataclasses.dataclass
class Program:
    """A jitted function, the abstract arguments to lower it with, and what it computes."""

    name: str
    jitted: object
    args: tuple
    seq_len: int
    sequences: int  # per step
    train: bool
    attention_kept: bool = False  # the remat policy keeps the attention's output: no second attention forward


def target_sharder(cfg, devices) -> Sharder:
    """The config's mesh over the target's devices; mesh `none` is one chip of them."""
    mesh = cfg.mesh_config()
    return mesh.sharder(devices) if mesh.enabled else MeshConfig(axes={"data": 1}).sharder(devices[:1])


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def train_program(cfg: LlamaConfig, tcfg, sharder: Sharder) -> Program:
    """train.py's step for `tcfg` (a TrainConfig): batch [batch_size, seq_len] in `accum` micro-batches."""
    model = abstract_model(cfg, dtype=tcfg.dtype, param_dtype=tcfg.param_dtype,
                           attention_backend=tcfg.attention_backend, remat=tcfg.remat, splash_blocks=tcfg.splash(),
                           sharder=sharder)
    graphdef, state = nnx.split(model)
    optimizer = make_optimizer(tcfg.learning_rate, warmup_steps=tcfg.warmup_steps, b1=tcfg.b1, b2=tcfg.b2,
                               eps=tcfg.eps, weight_decay=tcfg.weight_decay, clip_norm=tcfg.clip_norm,
                               decay=tcfg.lr_decay, total_steps=tcfg.steps)
    opt_state = jax.eval_shape(optimizer.init, state)
    step = TrainStep(model, optimizer, accum=tcfg.accum)
    shape = (tcfg.batch_size, tcfg.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding(sharder, shape)) for k in BATCH_KEYS}
    jitted = step.program(state, opt_state, {k: shape for k in BATCH_KEYS})
    args = (_abstract(state, tree_shardings(state, sharder)), _abstract(opt_state, tree_shardings(opt_state, sharder)),
            batch)
    # `attention` remat keeps what blockwise and ring attention name (model.REMAT_POLICIES); splash keeps nothing
    platform = sharder.mesh.devices.flat[0].platform
    kept = tcfg.remat == "attention" and (sharder.context_parallel == "ring"
                                          or resolve_backend(tcfg.attention_backend, platform) == "blockwise")
    return Program(f"train step [{tcfg.batch_size} x {tcfg.seq_len}]" + (f", {tcfg.accum} micro-batches"
                                                                          if tcfg.accum > 1 else ""),
                   jitted, args, tcfg.seq_len, tcfg.batch_size, True, attention_kept=kept)


def eval_program(cfg: LlamaConfig, ecfg, sharder: Sharder, length: int) -> Program:
    """eval.py's perplexity scorer at one length: one window [1, length] -> its next-token log-probs."""
    model = abstract_model(cfg, dtype=ecfg.dtype, param_dtype="float32",  # as eval.py loads them
                           attention_backend=ecfg.attention_backend, splash_blocks=ecfg.splash(), sharder=sharder)
    scorer = PerplexityScorer(model, cfg.bos_token_id)
    _, state = nnx.split(model)
    shape = (1, length)
    rep = sharder.replicated()
    inv_freq, factor = jax.eval_shape(lambda: rope_frequencies(cfg.rope, length))
    args = (_abstract(state, tree_shardings(state, sharder)),
            jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharder.named(("batch", "length"), shape)),
            jax.ShapeDtypeStruct(inv_freq.shape, jnp.float32, sharding=rep),
            jax.ShapeDtypeStruct(factor.shape, jnp.float32, sharding=rep))
    return Program(f"eval scorer [1 x {length}]", scorer.program(shape), args, length, 1, False)
