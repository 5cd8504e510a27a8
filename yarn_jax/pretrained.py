"""A loaded model: `load_pretrained(path_or_name, ...)` -> `LoadedModel` (its config, the NNX module, logits,
the tokenizer with the model's BOS rule, another rope on the same weights, saving). The public entry point,
`yarn_jax.from_pretrained`, returns its richer subclass (`api.PretrainedModel`: generation, perplexity);
the library's commands use this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax.assets import resolve_model
from yarn_jax.attention.kernels import SplashBlocks
from yarn_jax.checkpoint import open_checkpoint, save_hf_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import ConfigError
from yarn_jax.loading import load_model
from yarn_jax.model import Llama, model_params
from yarn_jax.platforms import skip_absent_tpu
from yarn_jax.sharding.rules import Sharder
from yarn_jax.outputs import check_disjoint


class LoadedModel:
    """A loaded LLaMA: `.config` (LlamaConfig), `.module` (the NNX Llama), `.logits(input_ids)`."""

    def __init__(self, module: Llama, source: str | None = None, tokenizer_dir: str | None = None):
        self.module = module
        self.config: LlamaConfig = module.config
        self.source = source
        self.tokenizer_dir = tokenizer_dir
        self._graphdef, self._state = nnx.split(module)
        self._logits = jax.jit(lambda state, ids, pos: nnx.merge(self._graphdef, state)(ids, pos))
        self._tokenizer = None

    @property
    def sharder(self) -> Sharder | None:
        """The mesh (and rules) the parameters are sharded over and the model runs on, if any."""
        return self.module.sharder

    def logits(self, input_ids, positions=None) -> jax.Array:
        """input_ids int [B, T] (or [T]) -> float32 logits [B, T, vocab] (or [T, vocab])."""
        ids = np.asarray(input_ids)  # checked in its own dtype: int64 ids must not wrap into valid int32 ones
        squeeze = ids.ndim == 1
        if squeeze:
            ids = ids[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or 0 in ids.shape:
            raise ConfigError(f"input_ids must be a non-empty integer array [B, T], got {ids.dtype} {ids.shape}")
        lo, hi = int(ids.min()), int(ids.max())  # an embedding lookup would clamp silently
        if lo < 0 or hi >= self.config.vocab_size:
            raise ConfigError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), "
                              f"got values in [{lo}, {hi}]")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
        out = self._logits(self._state, ids.astype(jnp.int32), jnp.asarray(positions, jnp.int32))
        return out[0] if squeeze else out

    def with_rope(self, rope_scaling: Mapping[str, Any] | None, where: str = "rope_scaling"):
        """The same weights (shared, not copied) under another rope configuration (an HF-style dict)."""
        module = self.module.replace(config=self.config.with_rope(rope_scaling, where=where))
        return type(self)(module, source=self.source, tokenizer_dir=self.tokenizer_dir)

    def tokenizer(self):
        """The HF fast tokenizer (tokenizers library) saved next to the weights — or, for a GGUF file with
        none beside it, the one its metadata carries (built as transformers builds it)."""
        from tokenizers import Tokenizer

        if self._tokenizer is not None:
            return self._tokenizer
        path = Path(self.tokenizer_dir or "") / "tokenizer.json"
        if (self.tokenizer_dir is None or not path.exists()) and str(self.source or "").endswith(".gguf"):
            from yarn_jax.checkpoint.gguf_tokenizer import gguf_tokenizer

            tok = gguf_tokenizer(self.source).backend_tokenizer
            check_tokenizer_vocab(tok, self.config.vocab_size, str(self.source))
            self._tokenizer = tok
            return tok
        if self.tokenizer_dir is None or not path.exists():
            raise ConfigError(f"{self.source}: no tokenizer.json next to the checkpoint")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on malformed files
            raise ConfigError(f"{path}: not a readable tokenizer ({' '.join(str(e).split())[:200]})") from None
        check_tokenizer_vocab(tok, self.config.vocab_size, str(path))
        self._tokenizer = tok
        return tok

    def encode(self, text: str, bos: bool = True) -> np.ndarray:
        """Token ids [T] int32 of `text`, with the model's BOS first when it has one (and `bos`) — the rule
        eval.py applies (`bos: auto`); the tokenizer's own special tokens are not added."""
        ids = self.tokenizer().encode(text, add_special_tokens=False).ids
        first = self.config.bos_token_id
        return np.asarray(([first] if bos and first is not None else []) + ids, np.int32)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer().decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                       skip_special_tokens=skip_special_tokens)

    def params(self) -> dict[tuple[str, ...], np.ndarray]:
        return {k: np.asarray(v) for k, v in model_params(self.module).items()}

    def save_pretrained(self, path: str | os.PathLike, dtype: str = "float32") -> Path:
        """Write an HF directory (config.json with this model's rope configuration, safetensors). The
        directory the model was loaded from (or one inside or around it) is refused, as `convert` refuses
        DST == SRC: rewriting a checkpoint with its own (possibly rounded) weights would lose the original."""
        if self.source is not None:
            check_disjoint(self.source, path, "save_pretrained destination")
        return save_hf_checkpoint(path, self.config, self.params(), dtype=dtype, tokenizer_dir=self.tokenizer_dir)


def check_tokenizer_vocab(tok, vocab_size: int, where: str) -> None:
    """Every id the tokenizer can emit (its vocabulary and added tokens) must exist in the embedding."""
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise ConfigError(f"{where}: the tokenizer emits ids up to {top}, but the model's embedding has "
                          f"vocab_size={vocab_size} rows; this tokenizer does not belong to this model")


def load_pretrained(
    path: str | os.PathLike,
    rope_scaling: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    *,
    param_dtype: str = "float32",
    attention_backend: str = "auto",
    remat: str = "none",
    sharder: Sharder | None = None,
    splash_blocks: SplashBlocks | None = None,
    step: int | None = None,
    cls: type[LoadedModel] = LoadedModel,
) -> LoadedModel:
    """Load an HF directory, `.gguf` file or yarn_jax checkpoint (its latest step, or `step`), or a bundled
    model by name (`smollm2`, fetched on first use); `rope_scaling` (an HF-style dict) overrides the
    checkpoint's.

    `dtype` is the compute dtype; parameters are stored in `param_dtype`. With a `sharder` (a mesh and
    its rules) the model runs on that mesh and every parameter is read straight into its shards
    (`loading.load_model`).
    """
    skip_absent_tpu()  # libtpu for ahead-of-time compiles on a machine without a TPU: stay on the CPU, quietly
    path = resolve_model(os.fspath(path))
    with open_checkpoint(path, step) as source:
        cfg = source.config
        if rope_scaling is not None:
            cfg = cfg.with_rope(rope_scaling, where="rope_scaling argument")
        module = load_model(source, cfg, sharder=sharder, dtype=dtype, param_dtype=param_dtype,
                            attention_backend=attention_backend, remat=remat, splash_blocks=splash_blocks)
        return cls(module, source=os.fspath(path), tokenizer_dir=source.tokenizer_dir)
