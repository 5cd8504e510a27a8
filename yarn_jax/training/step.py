"""The language-modelling loss, the optimizer and one jitted train step (sharded when a mesh is given).

Batches are dicts of [B, T] int32 arrays: `input_ids`, and optionally `segment_ids` (packed documents:
1, 2, ... per document, 0 = padding) and `positions` (restarting at 0 in every document). A token is
predicted only from the same document: the loss counts position t when t + 1 holds a real token of the
same segment (all positions but the last without segment ids).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from yarn_jax.loss import DEFAULT_CHUNK, weighted_nll
from yarn_jax.model import Llama
from yarn_jax.sharding.params import tree_shardings
from yarn_jax.sharding.rules import Sharder

BATCH_NAMES = ("batch", "length")


def loss_terms(model: Llama, batch: dict, *, chunk: int = DEFAULT_CHUNK):
    """(sum of NLL over counted tokens, number of counted tokens), float32 scalars. Under the model's
    sharder the loss head runs per device."""
    ids = batch["input_ids"]
    seg = batch.get("segment_ids")
    h = model.hidden_states(ids, batch.get("positions"), seg)  # [B, T, E]
    targets = jnp.roll(ids, -1, axis=1)  # position t predicts t + 1; the wrapped last one is masked out
    valid = jnp.arange(ids.shape[1]) < ids.shape[1] - 1
    if seg is not None:
        nxt = jnp.roll(seg, -1, axis=1)
        valid = valid & (nxt == seg) & (seg > 0)
    valid = model.constrain(jnp.broadcast_to(valid, ids.shape).astype(jnp.float32), BATCH_NAMES)
    return (weighted_nll(h, model.lm_head_weight(), targets, valid, chunk=chunk, sharder=model.sharder),
            jnp.sum(valid))


def learning_rate_schedule(learning_rate: float, warmup_steps: int, decay: str = "constant",
                           total_steps: int | None = None, final_ratio: float = 0.1):
    """An optax schedule of the update count t = 0, 1, ...: linear warmup over `warmup_steps` updates — the
    first at learning_rate / W, the W-th at the peak (no update at rate 0) — then constant (the paper's
    fine-tuning) or cosine decay to final_ratio * learning_rate at the last update (t = total_steps - 1:
    pretraining)."""
    if decay == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(f"cosine decay needs total_steps > warmup_steps, got {total_steps}, {warmup_steps}")
        base = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps,
                                                  end_value=final_ratio * learning_rate)
    elif decay != "constant":
        raise ValueError(f"learning-rate decay {decay!r}: choose constant or cosine")
    elif warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    else:
        base = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps),
                                     optax.constant_schedule(learning_rate)], [warmup_steps])
    return lambda count: base(count + 1)  # update t runs at the schedule's value for step t + 1


def make_optimizer(learning_rate: float = 2e-5, *, warmup_steps: int = 20, b1: float = 0.9, b2: float = 0.95,
                   eps: float = 1e-8, weight_decay: float = 0.0, clip_norm: float | None = 1.0,
                   decay: str = "constant", total_steps: int | None = None):
    """AdamW after global-norm clipping (which really clips: optax applies it to the update), linear warmup
    then constant (the paper's recipe: lr 2e-5, 20 warmup steps, beta (0.9, 0.95), no weight decay)."""
    schedule = learning_rate_schedule(learning_rate, warmup_steps, decay, total_steps)
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.chain(*parts, optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


@dataclasses.dataclass
class TrainStep:
    """`step(params, opt_state, batch) -> (params, opt_state, metrics)` for a model (concrete or abstract)
    jitted once, with explicit in/out shardings when the model has a sharder (parameters and moments by
    their logical names, the batch over `batch` and `length`), donating the old state. `accum`
    micro-batches split the batch rows; the gradient is that of the mean NLL over all counted tokens of
    the whole batch."""

    model: dataclasses.InitVar[Llama]
    optimizer: optax.GradientTransformation
    accum: int = 1
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self, model: Llama):
        self.graphdef = nnx.graphdef(model)
        self.sharder: Sharder | None = model.sharder
        self._jitted = {}

    def _step(self, params, opt_state, batch):
        def loss_fn(p, mb):
            return loss_terms(nnx.merge(self.graphdef, p), mb, chunk=self.chunk)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if self.accum == 1:
            (total, count), grads = grad_fn(params, batch)
        else:
            micro = jax.tree.map(lambda x: x.reshape(self.accum, x.shape[0] // self.accum, *x.shape[1:]), batch)

            def body(carry, mb):
                (t, c), g = grad_fn(params, mb)
                return jax.tree.map(jnp.add, carry, (t, c, g)), None

            zeros = (jnp.float32(0), jnp.float32(0), jax.tree.map(jnp.zeros_like, params))
            (total, count, grads), _ = jax.lax.scan(body, zeros, micro)
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": total / count, "tokens": count, "grad_norm": optax.global_norm(grads)}
        return params, opt_state, metrics

    def init(self, params):
        """Optimizer state, created directly in its shards."""
        if self.sharder is None:
            return jax.jit(self.optimizer.init)(params)
        shardings = tree_shardings(jax.eval_shape(self.optimizer.init, params), self.sharder)
        return jax.jit(self.optimizer.init, out_shardings=shardings)(params)

    def program(self, params, opt_state, batch_shapes: dict):
        """The jitted step for batches of these {name: shape} (parameters / moments may be abstract:
        ahead-of-time compilation lowers it with ShapeDtypeStructs)."""
        key = tuple(sorted((k, tuple(v)) for k, v in batch_shapes.items()))
        if key not in self._jitted:
            rows = batch_shapes["input_ids"][0]
            if rows % self.accum:
                raise ValueError(f"batch size {rows} is not divisible by accum={self.accum}")
            if self.sharder is None:
                self._jitted[key] = jax.jit(self._step, donate_argnums=(0, 1))
            else:
                ps = tree_shardings(params, self.sharder)
                os_ = tree_shardings(opt_state, self.sharder)
                bs = {k: batch_sharding(self.sharder, v) for k, v in batch_shapes.items()}
                self._jitted[key] = jax.jit(self._step, in_shardings=(ps, os_, bs),
                                            out_shardings=(ps, os_, self.sharder.replicated()),
                                            donate_argnums=(0, 1))
        return self._jitted[key]

    def __call__(self, params, opt_state, batch):
        return self.program(params, opt_state, {k: v.shape for k, v in batch.items()})(params, opt_state, batch)


def donatable(tree):
    """The jax arrays of `tree` on CPU copied into buffers XLA owns (others as they are). Checkpoints load on
    CPU without a copy — jax.device_put aliases the aligned host memory — but XLA cannot reuse such a buffer
    for a donated argument, so the train step's first call would copy every parameter (SmolLM2, 1k tokens:
    peak RSS 3.70 GB, 3.11 GB from owned buffers). On accelerators device_put has copied already."""
    def own(x):
        if isinstance(x, jax.Array) and all(d.platform == "cpu" for d in x.devices()):
            return jnp.copy(x)
        return x

    return jax.tree.map(own, tree)


def batch_sharding(sharder: Sharder, shape):
    """[B, T] batch arrays: rows over the data/fsdp axes, tokens over the sequence axis."""
    return sharder.named(BATCH_NAMES, shape)
