"""Analytic FLOPs of the programs and a modeled step time (every figure here is a model, not a
measurement: no TPU ran).

Model FLOPs (what MFU counts): matmuls 2 FLOPs per multiply-add — per token 2 * N_matmul (the layers'
q/k/v/o/gate/up/down and the LM head; the embedding lookup is free) — plus causal attention, per layer
and sequence 2 * T^2 * H * D (QK^T and PV over the lower triangle: half of 4 T^2 H D). Training is three
times the forward (forward, and the backward's two products). Hardware FLOPs add what the program
really recomputes in the backward: with `remat: full` the layers' forward; with `dots` attention only.

Step time (modeled): compute = the busiest chip's hardware FLOPs / peak bf16 FLOP/s — the attention share
scaled by the layout's imbalance (contiguous all-gather shards: the last attends to every key, about
(2P-1)/P of the mean; dual-chunk shards and Ulysses: 1); collectives = the compiled program's collective bytes per step over the chip's
ICI bandwidth (ring algorithms; DCN bandwidth for groups that span slices); the step is the larger of the
two (perfect overlap) — `no_overlap_s` is their sum.
"""

from __future__ import annotations

from yarn_jax.aot.hlo import CollectiveStats
from yarn_jax.aot.topology import Chip, ring_seconds
from yarn_jax.config import LlamaConfig


def matmul_params(cfg: LlamaConfig) -> tuple[int, int]:
    """(per-layer matmul parameters x layers, LM head parameters)."""
    e, h, k, d, f = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                     cfg.intermediate_size)
    layer = e * h * d + 2 * e * k * d + h * d * e + 3 * e * f
    return cfg.num_hidden_layers * layer, e * cfg.vocab_size


def flops(cfg: LlamaConfig, seq_len: int, sequences: int, *, train: bool, remat: str = "none",
          attention_kept: bool = False) -> dict:
    """Model and hardware FLOPs of one step over `sequences` sequences of `seq_len` tokens (whole program,
    all chips), split into dense (matmul) and attention parts. attention_kept: the `attention` policy keeps
    the attention's output (blockwise or ring attention), so the backward reruns no attention forward."""
    layers, head = matmul_params(cfg)
    tokens = seq_len * sequences
    dense_fwd = 2 * (layers + head) * tokens
    attn_fwd = 2 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len ** 2 * sequences
    passes = 3 if train else 1
    # backward recomputation: "full" reruns the layers' forward; "dots" keeps the projections' outputs
    # and reruns attention (the kernels' forward) and the elementwise work only; "attention" is "full" with
    # the TPU / GPU kernels, whose residuals stay inside them (`attention_kept` False)
    dense_again = 2 * layers * tokens if train and remat in ("full", "attention") else 0
    attn_again = attn_fwd if train and remat != "none" and not (remat == "attention" and attention_kept) else 0
    return {"model_flops": passes * (dense_fwd + attn_fwd),
            "hardware_flops": passes * (dense_fwd + attn_fwd) + dense_again + attn_again,
            "dense_flops": passes * dense_fwd + dense_again,
            "attention_flops": passes * attn_fwd + attn_again,
            "tokens": tokens, "params": layers + head + (0 if cfg.tie_word_embeddings else
                                                          cfg.vocab_size * cfg.hidden_size)}


def model_step(f: dict, collectives: list[CollectiveStats], chip: Chip, chips: int, imbalance: float) -> dict:
    """Modeled seconds per step and MFU on `chips` chips (see the module docstring); `imbalance`: the
    busiest device's attention work over the mean (`sharding.balance.attention_imbalance`)."""
    busiest = (f["dense_flops"] + f["attention_flops"] * imbalance) / chips
    compute = busiest / chip.peak_bf16_flops
    ici = sum(ring_seconds(c.kind, c.bytes, c.group_size, chip.ici_bandwidth)
              for c in collectives if not c.crosses_slices)
    dcn = sum(ring_seconds(c.kind, c.bytes, c.group_size, chip.dcn_bandwidth)
              for c in collectives if c.crosses_slices)
    step = max(compute, ici, dcn)
    return {"compute_s": compute, "ici_s": ici, "dcn_s": dcn, "step_s": step, "no_overlap_s": compute + ici + dcn,
            "bound": max(("compute", compute), ("ici", ici), ("dcn", dcn), key=lambda x: x[1])[0],
            "tokens_per_s": f["tokens"] / step if step else None,
            "mfu": f["model_flops"] / chips / step / chip.peak_bf16_flops if step else None,
            "attention_imbalance": imbalance}
