"""A conversion's logit check: the source and the result run on the same prompt; max |Δ logit| and mean
per-token KL(source || result) against thresholds.

The source runs in yarn_jax (any format), or — for HF sources, with torch installed — in transformers'
model class of its family (`AutoModelForCausalLM`: an independent implementation), with its weights
rounded to the result's dtype and float32 compute: a correct conversion then gives the same logits up to
float32 rounding whatever the dtype, so one tight threshold catches any conversion error. For a 16-bit result the report also gives what the
rounding itself costs (float32 source vs result), for information: on SmolLM2 over 1024 random tokens
bf16 rounding moves logits by up to 42 and KL by 7.6e-3 (the same in transformers), so no fixed bound on it
could tell rounding from a mistake.
"""

from __future__ import annotations

import gc
from typing import Any, Mapping

import numpy as np

from yarn_jax.checkpoint import open_checkpoint
from yarn_jax.checkpoint.gguf import as_stored, gguf_name, stored_source
from yarn_jax.errors import YarnJaxError
from yarn_jax.loading import load_model
from yarn_jax.pretrained import LoadedModel, load_pretrained

# (max |Δ logit|, mean KL in nats): what our transformers-parity tests hold to in float32 (a conversion
# between yarn_jax formats gives exactly 0).
MAX_ABS_LOGIT, MAX_KL = 1e-3, 1e-6


class VerificationError(YarnJaxError):
    """The converted checkpoint's logits differ from the source's past the thresholds."""

    exit_code = 3


def prompt_ids(vocab_size: int, n_tokens: int, seed: int = 0) -> np.ndarray:
    """[n_tokens] token ids drawn uniformly (seeded) from the vocabulary: every row of the embedding
    and head is equally likely to take part, and no tokenizer is needed."""
    return np.random.default_rng(seed).integers(0, vocab_size, n_tokens).astype(np.int32)


def yarn_jax_logits(path: str, ids: np.ndarray, rope: Mapping[str, Any] | None = None,
                    weights: str = "float32", gguf: bool = False) -> np.ndarray:
    """[T, V] float32 logits of a checkpoint (any format) in yarn_jax, under `rope` if given, its weights
    held in `weights` precision — or, with `gguf`, as a GGUF file of that dtype holds each tensor (norms
    float32, quantized blocks dequantized) — with float32 compute."""
    if gguf and weights != "float32":
        with open_checkpoint(path) as source:
            cfg = source.config if rope is None else source.config.with_rope(rope, where="--rope")
            model = LoadedModel(load_model(stored_source(source, weights), cfg))
    else:
        model = load_pretrained(path, rope_scaling=rope, param_dtype=weights)
    out = np.asarray(model.logits(ids), np.float32)
    del model
    gc.collect()
    return out


def transformers_logits(hf_dir: str, ids: np.ndarray, rope: Mapping[str, Any] | None = None,
                        weights: str = "float32", gguf: bool = False) -> np.ndarray:
    """[T, V] float32 logits of an HF directory in transformers (torch), under `rope` if given, its weights
    rounded to `weights` precision — or, with `gguf`, each set to what a GGUF file of that dtype holds for
    it — with float32 compute."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    if rope is not None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
        config.rope_parameters = {**dict(rope), "rope_theta": theta}
    stored = gguf and weights != "float32"
    model = AutoModelForCausalLM.from_pretrained(hf_dir, config=config, dtype=torch.float32 if stored else
                                                 getattr(torch, weights)).float().eval()
    if stored:
        with torch.no_grad():
            for name, param in model.named_parameters():  # (a tied head is the embedding: stored once, as it)
                param.copy_(torch.from_numpy(as_stored(param.numpy(), weights, gguf_name(name))))
    with torch.no_grad():
        out = model(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].float().numpy()
    del model
    gc.collect()
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """max |Δ logit| and mean over positions of KL(softmax(ref) || softmax(got)), in nats."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    lp, lq = _log_softmax(ref), _log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"max_abs_logit_diff": float(np.abs(ref - got).max()), "mean_kl": float(max(kl.mean(), 0.0)),
            "tokens": int(ref.shape[0])}


def verify(source: str, result: str, *, rope: Mapping[str, Any] | None = None, n_tokens: int = 1024,
           reference: str = "yarn_jax", dtype: str = "float32", max_abs: float | None = None,
           max_kl: float | None = None, seed: int = 0, vocab_size: int, gguf: bool = False) -> dict[str, Any]:
    """Run both on one prompt; the report says whether the thresholds hold (`passed`). The source's
    weights are rounded as the result stores them (`gguf`: per tensor, as a GGUF file of `dtype` does), so
    a correct conversion gives the same logits up to float32 rounding whatever the dtype."""
    ids = prompt_ids(vocab_size, n_tokens, seed)
    run_source = transformers_logits if reference == "transformers" else yarn_jax_logits
    got = yarn_jax_logits(result, ids)
    report = compare_logits(run_source(source, ids, rope, weights=dtype, gguf=gguf), got)
    report.update(reference=f"{reference}, source weights {'as the GGUF file stores them' if gguf else 'in'} {dtype}",
                  max_abs_threshold=MAX_ABS_LOGIT if max_abs is None else max_abs,
                  kl_threshold=MAX_KL if max_kl is None else max_kl)
    report["passed"] = bool(report["max_abs_logit_diff"] <= report["max_abs_threshold"]
                            and report["mean_kl"] <= report["kl_threshold"])
    if dtype != "float32":  # what the rounding itself costs (information, not checked)
        rounding = compare_logits(run_source(source, ids, rope), got)
        report["rounding_vs_float32_source"] = {k: rounding[k] for k in ("max_abs_logit_diff", "mean_kl")}
    return report
