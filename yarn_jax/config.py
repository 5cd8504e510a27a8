"""Model configuration: HF ``config.json`` <-> LlamaConfig, for every family in `yarn_jax.families`
(LLaMA and the families built from its blocks)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

from yarn_jax.errors import ConfigError
from yarn_jax.families import FAMILIES, family_of
from yarn_jax.families.base import LAYER_TYPES
from yarn_jax.rope import RopeConfig, parse_rope_config


QK_NORMS = (None, "head", "projection")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A LLaMA-family decoder (RMSNorm, SwiGLU, GQA, rotary). Hashable: usable as a static jit argument.
    `model_type` names its family (`yarn_jax.families`); the feature fields (qkv_bias, o_bias, qk_norm) are
    what the family turns on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope: RopeConfig
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    model_type: str = "llama"
    qkv_bias: bool = False  # a bias on the q, k and v projections (Qwen2; LLaMA/Qwen3 attention_bias)
    o_bias: bool = False  # a bias on the output projection (LLaMA/Qwen3 attention_bias)
    # RMSNorm on queries and keys before the rotary: "head" over head_dim of each head (Qwen3),
    # "projection" over the whole q/k projection, H*D and K*D features (OLMo 2/3); None: none
    qk_norm: str | None = None
    post_norm: bool = False  # OLMo 2/3: RMSNorm on the attention and MLP outputs, none on their inputs
    rope_layers: tuple[bool, ...] | None = None  # per layer: rotary or not (SmolLM3's NoPE layers); None = all
    fused_projections: bool = False  # checkpoint layout: one qkv_proj and one gate_up_proj tensor (Phi-3)
    sliding_window: int | None = None  # keys a sliding-window layer sees, its own included (HF's sliding_window)
    layer_types: tuple[str, ...] | None = None  # per layer: "full_attention" / "sliding_attention"; None = all full
    sliding_rope: RopeConfig | None = None  # the sliding layers' rope when it differs per layer type (OLMo 3)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config field 'num_attention_heads'={self.num_attention_heads} must be a multiple of "
                f"'num_key_value_heads'={self.num_key_value_heads}"
            )
        if self.rope_layers is not None and (len(self.rope_layers) != self.num_hidden_layers
                                             or not all(isinstance(b, bool) for b in self.rope_layers)):
            raise ConfigError(f"config field 'rope_layers' must hold one true/false per layer "
                              f"({self.num_hidden_layers}), got {self.rope_layers!r}")
        if self.qk_norm not in QK_NORMS:
            raise ConfigError(f"config field 'qk_norm'={self.qk_norm!r}: choose from {list(QK_NORMS)}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ConfigError(f"config field 'layer_types' must name one of {list(LAYER_TYPES)} for each of the "
                                  f"{self.num_hidden_layers} layers, got {list(self.layer_types)!r}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ConfigError("config field 'layer_types' has sliding_attention layers but 'sliding_window' is not set")
        if self.sliding_window is not None and (isinstance(self.sliding_window, bool)
                                                or not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ConfigError(f"config field 'sliding_window' must be a positive integer, got {self.sliding_window!r}")
        if self.sliding_rope is not None and self.sliding_rope.head_dim != self.head_dim:
            raise ConfigError(f"sliding-layer rope head_dim {self.sliding_rope.head_dim} != config 'head_dim' "
                              f"{self.head_dim}")
        if self.model_type not in FAMILIES:
            raise ConfigError(f"config field 'model_type'={self.model_type!r}: supported {sorted(FAMILIES)}")
        if self.rope.head_dim != self.head_dim:
            raise ConfigError(f"rope head_dim {self.rope.head_dim} != config 'head_dim' {self.head_dim}")
        for name, positive in (("rms_norm_eps", True), ("initializer_range", False)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
                value > 0 if positive else value >= 0)
            if not ok:
                raise ConfigError(f"config field '{name}' must be a finite number {'> 0' if positive else '>= 0'}, "
                                  f"got {value!r}")
        # the special ids the tokenizer feeds in and generation stops on must exist in the embedding
        eos = self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)
        for name, ids in (("bos_token_id", (self.bos_token_id,)), ("eos_token_id", eos)):
            for i in ids:
                if i is not None and (isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size):
                    raise ConfigError(f"config field '{name}'={i!r} is not a token id of the vocabulary "
                                      f"[0, vocab_size={self.vocab_size})")

    @property
    def max_position_embeddings(self) -> int:
        return self.rope.max_position_embeddings

    def layer_kinds(self) -> tuple[str, ...]:
        """Each layer's type: "full_attention" or "sliding_attention"."""
        return self.layer_types or ("full_attention",) * self.num_hidden_layers

    def layer_windows(self) -> tuple[int | None, ...]:
        """Each layer's sliding window (None: full causal attention)."""
        return tuple(self.sliding_window if kind == "sliding_attention" else None for kind in self.layer_kinds())

    def layer_ropes(self) -> tuple[str, ...]:
        """Each layer's rotary: "rope" (the configured one, which methods replace), "sliding_rope" (the
        sliding layers' own, per layer type) or "none" (NoPE)."""
        rotates = self.rope_layers or (True,) * self.num_hidden_layers
        own = self.sliding_rope is not None and self.sliding_rope != self.rope
        return tuple("none" if not r else "sliding_rope" if own and kind == "sliding_attention" else "rope"
                     for r, kind in zip(rotates, self.layer_kinds()))

    def with_rope(self, rope_scaling: Mapping[str, Any] | None, where: str = "rope_scaling") -> "LlamaConfig":
        """A copy with another HF-style rope dict as the rope (of the full-attention layers, when the sliding ones
        have their own); theta and partial rotary default to the current ones."""
        rope = parse_rope_config(
            rope_scaling, head_dim=self.head_dim, max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope.theta, partial_rotary_factor=self.rope.partial_rotary_factor, where=where,
        )
        return dataclasses.replace(self, rope=rope)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], where: str = "config.json") -> "LlamaConfig":
        """Parse an HF config dict of a supported family (transformers 4 or 5 field names)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a JSON object of config fields, got {type(d).__name__}")
        family = family_of(d, where)
        d = {**family.defaults, **d}  # HF's defaults of the family's config class for the fields omitted
        family.check(d, where)
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}['hidden_act']={act!r} is not supported (these families use 'silu')")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in d:
                raise ConfigError(f"{where} is missing required field '{key}'")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = d.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}['{key}'] must be a positive integer, got {value!r}")
        for key in ("rms_norm_eps", "initializer_range", "rope_theta", "partial_rotary_factor"):
            value = d.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ConfigError(f"{where}['{key}'] must be a finite number, got {value!r}")
        heads = d["num_attention_heads"]
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        max_pos = d.get("max_position_embeddings", 2048)

        def rope_of(rope_dict, rope_where):
            if rope_dict is not None and not isinstance(rope_dict, Mapping):
                raise ConfigError(f"{rope_where} must be a dict, got {type(rope_dict).__name__}")
            return parse_rope_config(
                rope_dict, head_dim=head_dim, max_position_embeddings=max_pos, rope_theta=d.get("rope_theta"),
                partial_rotary_factor=d.get("partial_rotary_factor"),
                original_max_position_embeddings=d.get("original_max_position_embeddings"), where=rope_where,
            )

        # transformers 5 writes `rope_parameters` (with rope_theta inside); transformers 4 `rope_scaling`.
        if d.get("rope_parameters") is not None:
            rope_dict, rope_where = d["rope_parameters"], f"{where}['rope_parameters']"
        else:
            rope_dict, rope_where = d.get("rope_scaling"), f"{where}['rope_scaling']"
        per_type = isinstance(rope_dict, Mapping) and bool(rope_dict) and set(rope_dict) <= set(LAYER_TYPES)
        sliding_rope = None
        if family.rope_per_layer_type:
            if d.get("rope_parameters") is not None and not per_type:
                raise ConfigError(f"{rope_where}: {family.architecture} takes one rope per layer type, "
                                  f"{{'full_attention': {{...}}, 'sliding_attention': {{...}}}} (transformers ignores a "
                                  "flat dict here); a flat transformers-4 'rope_scaling' applies to the full layers")
            full, sliding = (rope_dict.get("full_attention"), rope_dict.get("sliding_attention")) if per_type else (
                rope_dict, None)
            rope = rope_of(full, f"{rope_where}['full_attention']" if per_type else rope_where)
            sliding_rope = rope_of(sliding, f"{rope_where}['sliding_attention']")
        elif per_type:
            raise ConfigError(f"{rope_where}: a rope per layer type is not supported for {family.architecture}")
        else:
            rope = rope_of(rope_dict, rope_where)
        eos = d.get("eos_token_id")
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads, head_dim=head_dim, rope=rope,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"), initializer_range=float(d.get("initializer_range", 0.02)),
            model_type=family.model_type, sliding_rope=sliding_rope, **family.features(d, where),
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "LlamaConfig":
        from etils import epath

        try:
            d = json.loads(epath.Path(path).read_text())  # local or gs://...
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, where=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF config.json dict that transformers loads as this family's model, carrying the rope used.

        The paper-only methods are written as their exact HF equivalents where one exists (each method's
        record says how); others (`dynamic_yarn`) raise ConfigError.
        """
        rope_parameters = self.rope.hf_parameters()
        if FAMILIES[self.model_type].rope_per_layer_type:
            rope_parameters = {"full_attention": rope_parameters,
                               "sliding_attention": (self.sliding_rope or self.rope).hf_parameters()}
        out = {
            "architectures": [FAMILIES[self.model_type].architecture], "model_type": self.model_type,
            "hidden_act": "silu",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range, "rope_parameters": rope_parameters,
            "torch_dtype": "float32", **FAMILIES[self.model_type].feature_fields(self),
        }
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out
