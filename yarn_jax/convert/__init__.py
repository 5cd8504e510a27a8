"""Checkpoint conversion: HF directory / GGUF file / yarn_jax (orbax) checkpoint -> HF directory or yarn_jax
checkpoint, one parameter at a time, verified by a logit check before the result is moved into place.

    python -m yarn_jax.convert SRC DST [--to hf|orbax] [--rope YAML] [--dtype bfloat16] [--no-verify]
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Mapping

from etils import epath

from yarn_jax.checkpoint import checkpoint_format, open_checkpoint, write_hf_directory, write_orbax_streamed
from yarn_jax.checkpoint.layout import SAFETENSORS_DTYPES, check_replaceable, np_dtype
from yarn_jax.convert.verify import VerificationError, verify
from yarn_jax.errors import ConfigError
from yarn_jax.outputs import Staging, check_disjoint, lock, remove_tree

REPORT = "conversion.json"


def default_target(src: str) -> str:
    """yarn_jax checkpoints go to HF (to share them); HF directories and GGUF files to yarn_jax (to train)."""
    return "hf" if checkpoint_format(src) == "orbax" else "orbax"


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None, step: int | None = None,
            rope: Mapping[str, Any] | None = None, dtype: str = "float32", verify_logits: bool = True,
            verify_tokens: int = 1024, reference: str = "yarn_jax", max_abs: float | None = None,
            max_kl: float | None = None, overwrite: bool = False, max_shard_bytes: int = 5 * 2**30,
            progress: bool = True) -> dict[str, Any]:
    """Convert `src` into `dst`; returns the report (also written as DST/conversion.json).

    The result is built in a temporary sibling of `dst`, verified there (unless verify_logits=False), and
    only then moved into place; a failed check leaves it at `DST.rejected` and raises VerificationError.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    to = to or default_target(src)
    if to not in ("hf", "orbax"):
        raise ConfigError(f"--to {to!r}: choose hf or orbax")
    if dtype not in SAFETENSORS_DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose {', '.join(SAFETENSORS_DTYPES)}")
    if reference not in ("yarn_jax", "transformers"):
        raise ConfigError(f"--reference {reference!r}: choose yarn_jax or transformers")
    if verify_tokens < 1:
        raise ConfigError(f"--verify-tokens must be positive, got {verify_tokens}")
    final = epath.Path(dst)
    check_disjoint(src, dst, "destination")
    with lock(dst, f"destination {dst}"):
        if final.exists():
            if not overwrite:
                raise ConfigError(f"{dst}: already exists (pass --overwrite to replace it)")
            check_replaceable(final)
        start = time.time()
        staging = Staging(final)
        with staging as tmp:
            with open_checkpoint(src, step) as source:
                if reference == "transformers" and source.kind != "hf":
                    raise ConfigError(f"--reference transformers needs an HF source directory; {src} is "
                                      f"{source.kind}")
                cfg = source.config if rope is None else source.config.with_rope(rope, where="--rope")
                hf_rope = cfg.to_hf_dict().get("rope_parameters")  # no HF form (dynamic_yarn): fails here
                bar = _progress(f"{source.kind} -> {to}") if progress else iter
                read = functools.partial(source.read, dtype=np_dtype(dtype))
                common = dict(dtype=dtype, tokenizer_dir=source.tokenizer_dir, source=src, progress=bar)
                kind = source.kind
                if to == "hf":
                    write_hf_directory(tmp, cfg, read, max_shard_bytes=max_shard_bytes, **common)
                else:
                    write_orbax_streamed(tmp, cfg, read, **common)
            report: dict[str, Any] = {"source": src, "source_format": kind, "destination": dst, "format": to,
                                      "dtype": dtype, "rope": hf_rope,
                                      "seconds_convert": round(time.time() - start, 2)}
            if verify_logits:
                t0 = time.time()
                src_path = os.path.join(src, str(step)) if step is not None and kind == "orbax" else src
                report["verify"] = verify(src_path, os.fspath(tmp), rope=rope, n_tokens=verify_tokens,
                                          reference=reference, dtype=dtype, max_abs=max_abs, max_kl=max_kl,
                                          vocab_size=cfg.vocab_size)
                report["seconds_verify"] = round(time.time() - t0, 2)
            (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
            if verify_logits and not report["verify"]["passed"]:
                rejected = epath.Path(f"{dst}.rejected")
                if rejected.exists():
                    check_replaceable(rejected, "a rejected conversion")
                    remove_tree(rejected)
                tmp.rename(rejected)
                v = report["verify"]
                raise VerificationError(
                    f"{src} -> {dst}: logits differ past the thresholds: max |Δ logit| "
                    f"{v['max_abs_logit_diff']:.3g} (threshold {v['max_abs_threshold']:.3g}), mean KL "
                    f"{v['mean_kl']:.3g} (threshold {v['kl_threshold']:.3g}); the result is kept at {rejected} "
                    "for inspection")
            staging.commit(replace=overwrite)  # an old DST goes only now that the new one is complete
    return report


def _progress(desc: str):
    from tqdm import tqdm

    return lambda items: tqdm(list(items), desc=desc, unit="param")


__all__ = ["convert", "default_target", "VerificationError"]
