"""The fine-tuning configuration: a pydantic model read from YAML (configs/train/*.yaml) and overridden by
one flag per field (`python train.py --config ... --steps 10 --learning-rate 1e-5`). A bad value fails
before any compute, naming the field."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator,
                      model_validator)

from yarn_jax.attention import BACKEND_CHOICES
from yarn_jax.cli_config import ParallelConfig
from yarn_jax.model import REMAT_POLICIES
from yarn_jax.rope.spec import parse_rope_spec


class TrainConfig(ParallelConfig):
    """Without a config file every field has its default below: the checkpoint's own rope (no method is
    applied unless asked for) and the paper's optimizer (AdamW 2e-5, 20 warmup steps, 400 steps)."""

    FLAG_SECTIONS: ClassVar = (
        ("model", ("model", "dtype", "param_dtype", "attention_backend", "remat")),
        ("method", ("rope",)),
        ("data", ("data", "text_field", "tfds_data_dir", "max_docs", "eval_docs", "seq_len", "packing", "seed")),
        ("optimization", ("batch_size", "accum", "steps", "learning_rate", "warmup_steps", "lr_decay", "b1", "b2",
                          "eps", "weight_decay", "clip_norm")),
        ("run", ("out", "save_every", "keep", "save_optimizer", "async_checkpoint", "log_every", "eval_every",
                 "eval_length")),
    )

    model: str = Field("smollm2", description="initial weights: HF directory, .gguf file, yarn_jax checkpoint "
                       "(root or ROOT/<step>), or 'smollm2'")
    rope: dict[str, Any] | None = Field(None, description="rope configuration to train with: an HF rope dict "
                                        "'{rope_type: yarn, factor: 16, original_max_position_embeddings: 4096}' "
                                        "or the short form yarn:factor=16,original_max_position_embeddings=4096 "
                                        "(default: the checkpoint's own)")
    data: str = Field("shakespeare", description="shakespeare | file/dir of .txt/.md | .jsonl | tfds:NAME[:SPLIT]")
    text_field: str | None = Field(None, description="text field of JSONL lines / TFDS examples (default: `text` for "
                                      "JSONL; for TFDS the first of text, book_text, content, article present)")
    tfds_data_dir: str | None = Field(None, description="TFDS data_dir")
    max_docs: PositiveInt | None = Field(None, description="use the first N documents (null: all)")
    eval_docs: NonNegativeInt = Field(1, description="documents held out (the last ones) for periodic evaluation")
    seq_len: PositiveInt = Field(2048, description="tokens per training sequence")
    packing: Literal["pack", "chunk"] = Field("pack", description="pack documents into rows (segment-aware) "
                                              "or chunk each document (the paper's PG19 chunks)")
    batch_size: PositiveInt = Field(1, description="global batch, in sequences per optimizer step")
    accum: PositiveInt = Field(1, description="gradient accumulation: micro-batches per step (divides batch_size)")
    steps: PositiveInt = Field(400, description="optimizer steps")
    learning_rate: PositiveFloat = Field(2e-5, description="peak learning rate (after warmup, constant)")
    warmup_steps: NonNegativeInt = Field(20, description="linear warmup steps (step k of W runs at k/W of the "
                                         "peak rate, k = 1..W)")
    lr_decay: Literal["constant", "cosine"] = Field("constant", description="after warmup: constant (the paper's "
                                                    "fine-tuning) or cosine to 0.1x at `steps` (pretraining)")
    b1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1, in [0, 1)")
    b2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2, in [0, 1)")
    eps: PositiveFloat = Field(1e-8, description="AdamW epsilon (> 0)")
    weight_decay: NonNegativeFloat = Field(0.0, description="AdamW weight decay (>= 0)")
    clip_norm: PositiveFloat | None = Field(1.0, description="global gradient-norm clipping (> 0; null: off)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="compute dtype")
    param_dtype: Literal["float32", "bfloat16"] = Field("float32", description="master weights' dtype")
    remat: Literal[tuple(REMAT_POLICIES)] = Field("full", description="rematerialization "
                                                                   "policy of the scanned layer")
    attention_backend: Literal[BACKEND_CHOICES] = Field("auto", description=" | ".join(BACKEND_CHOICES))
    seed: int = Field(0, ge=0, description="data order")
    out: str = Field("runs/train", description="run directory: checkpoints/, metrics.jsonl, tb/")
    save_every: PositiveInt = Field(50, description="checkpoint every N steps (and at the end / on SIGTERM)")
    keep: PositiveInt = Field(3, description="checkpoints kept")
    save_optimizer: bool = Field(True, description="keep the AdamW moments in each checkpoint (2/3 of its size; "
                                 "needed to resume exactly); false: weights only — 1/3 of the disk, and such a run "
                                 "is not resumed but only fine-tuned further from its weights (--model)")
    async_checkpoint: bool = Field(True, description="write checkpoints in the background")
    log_every: PositiveInt = Field(1, description="metrics every N steps")
    eval_every: NonNegativeInt = Field(0, description="held-out perplexity every N steps (0: never)")
    eval_length: int | None = Field(None, ge=2, description="held-out evaluation length (default: seq_len)")

    @field_validator("rope", mode="before")
    @classmethod
    def _rope_spec(cls, v):
        """The short form (as eval.py's --methods and convert's --rope take it) or `default` / `none`."""
        return parse_rope_spec(v) if isinstance(v, str) else v  # (a ConfigError is a ValueError: pydantic names the field)

    @model_validator(mode="after")
    def _accum_divides(self):
        if self.batch_size % self.accum:
            raise ValueError(f"accum={self.accum} must divide batch_size={self.batch_size}")
        return self

    @model_validator(mode="after")
    def _cosine_has_room(self):
        if self.lr_decay == "cosine" and self.steps <= self.warmup_steps:
            raise ValueError(f"lr_decay=cosine needs steps ({self.steps}) > warmup_steps ({self.warmup_steps})")
        return self


# Fields that define the run's trajectory: a run directory refuses to resume under other values.
TRAJECTORY_FIELDS = ("rope", "data", "text_field", "max_docs", "eval_docs", "seq_len", "packing", "batch_size",
                     "accum", "learning_rate", "warmup_steps", "lr_decay", "b1", "b2", "eps", "weight_decay",
                     "clip_norm", "dtype", "param_dtype", "seed")
