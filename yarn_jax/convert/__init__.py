"""Checkpoint conversion: HF directory / GGUF file / yarn_jax (orbax) checkpoint -> HF directory, yarn_jax
checkpoint or GGUF file, one parameter at a time, verified by a logit check before the result is moved into
place.

    python -m yarn_jax.convert SRC DST [--to hf|orbax|gguf] [--rope YAML] [--dtype bfloat16] [--no-verify]
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Mapping

from etils import epath

from yarn_jax.checkpoint import checkpoint_format, open_checkpoint, write_hf_directory, write_orbax_streamed
from yarn_jax.checkpoint.gguf import write_gguf
from yarn_jax.checkpoint.gguf import GGUF_DTYPES
from yarn_jax.checkpoint.layout import SAFETENSORS_DTYPES, check_replaceable, np_dtype
from yarn_jax.convert.verify import VerificationError, verify
from yarn_jax.errors import ConfigError
from yarn_jax.outputs import Staging, check_disjoint, lock, remove_tree
from yarn_jax.progress import Progress, working

REPORT = "conversion.json"


def default_target(src: str, dst: str = "") -> str:
    """A DST named *.gguf is a GGUF file; otherwise yarn_jax checkpoints go to HF (to share them), HF
    directories and GGUF files to yarn_jax (to train)."""
    if os.fspath(dst).endswith(".gguf"):
        return "gguf"
    return "hf" if checkpoint_format(src) == "orbax" else "orbax"


def _check_replaceable_file(path) -> None:
    """--overwrite of a GGUF destination replaces a GGUF file and nothing else."""
    if not path.is_file():
        raise ConfigError(f"{path}: exists and is not a file; a GGUF destination replaces only a GGUF file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"{path}: is not a GGUF file; --overwrite replaces only a GGUF file")


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
    to = to or default_target(src, dst)
    if to not in ("hf", "orbax", "gguf"):
        raise ConfigError(f"--to {to!r}: choose hf, orbax or gguf")
    if to == "gguf" and not dst.endswith(".gguf"):
        raise ConfigError(f"{dst}: a GGUF destination is a file named *.gguf")
    dtypes = GGUF_DTYPES if to == "gguf" else tuple(SAFETENSORS_DTYPES)
    if dtype not in dtypes:
        raise ConfigError(f"--dtype {dtype!r}: choose {', '.join(dtypes)} for --to {to}"
                          + (" (block-quantized types are GGUF's)" if dtype in GGUF_DTYPES else ""))
    if reference not in ("yarn_jax", "transformers"):
        raise ConfigError(f"--reference {reference!r}: choose yarn_jax or transformers")
    if verify_tokens < 1:
        raise ConfigError(f"--verify-tokens must be positive, got {verify_tokens}")
    for flag, value in (("--max-abs-logit", max_abs), ("--max-kl", max_kl), ("--max-shard-gb", max_shard_bytes)):
        if value is not None and not (math.isfinite(value) and value > 0):
            shown = value / 2**30 if flag == "--max-shard-gb" else value
            raise ConfigError(f"{flag} must be a finite number > 0, got {shown}")
    final = epath.Path(dst)
    check_disjoint(src, dst, "destination")
    with lock(dst, f"destination {dst}"):
        if final.exists():
            if not overwrite:
                raise ConfigError(f"{dst}: already exists (pass --overwrite to replace it)")
            _check_replaceable_file(final) if to == "gguf" else check_replaceable(final)
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
                # (a GGUF writer reads float32: llama.cpp keeps norms and biases float32 in any file type)
                read = functools.partial(source.read, dtype=np_dtype("float32" if to == "gguf" else dtype))
                common = dict(dtype=dtype, tokenizer_dir=source.tokenizer_dir, source=src, progress=bar)
                kind = source.kind
                written = tmp / final.name if to == "gguf" else tmp  # a GGUF result is one file
                gguf_summary = None
                if to == "hf":
                    write_hf_directory(tmp, cfg, read, max_shard_bytes=max_shard_bytes, **common)
                elif to == "gguf":
                    gguf_summary = write_gguf(written, cfg, read, **common)
                else:
                    write_orbax_streamed(tmp, cfg, read, **common)
            report: dict[str, Any] = {"source": src, "source_format": kind, "destination": dst, "format": to,
                                      "dtype": dtype, "rope": hf_rope,
                                      "seconds_convert": round(time.time() - start, 2)}
            if gguf_summary is not None:
                report["gguf"] = gguf_summary
            if verify_logits:
                t0 = time.time()
                src_path = os.path.join(src, str(step)) if step is not None and kind == "orbax" else src
                with working(f"logit check ({verify_tokens} tokens, {reference} vs the result)", enabled=progress):
                    report["verify"] = verify(src_path, os.fspath(written), rope=rope, n_tokens=verify_tokens,
                                              reference=reference, dtype=dtype, max_abs=max_abs, max_kl=max_kl,
                                              vocab_size=cfg.vocab_size, gguf=to == "gguf")
                report["seconds_verify"] = round(time.time() - t0, 2)
            if to != "gguf":  # (a GGUF result is a single file: its report is only returned and printed)
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
            if to == "gguf":  # the file into place (an old DST replaced only now), the staging directory removed
                os.replace(written, final)
                remove_tree(tmp)
            else:
                staging.commit(replace=overwrite)  # an old DST goes only now that the new one is complete
    return report


def _progress(desc: str):
    """An iterable wrapper reporting each parameter written (a bar on a terminal, plain lines in a log)."""
    def each(items):
        items = list(items)
        with Progress(len(items), desc, unit="params") as bar:
            for item in items:
                yield item
                bar.update(1)

    return each


__all__ = ["convert", "default_target", "VerificationError"]
