"""The evaluation configuration: a pydantic model, read from YAML and overridden from the command line.

Every field is also a flag of eval.py (`--lengths 2048 4096`, `--methods none yarn`, `--protocol
sliding`); a bad value fails before any compute with a message naming the field.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

from yarn_jax import cli_config
from yarn_jax.attention import BACKEND_CHOICES
from yarn_jax.cli_config import ParallelConfig
from yarn_jax.evaluation.ruler import TASKS as RULER_TASKS
from yarn_jax.rope import NAMED


class EvalConfig(ParallelConfig):
    """The defaults are the default evaluation (`configs/eval/default.yaml` spells them out)."""

    FLAG_SECTIONS: ClassVar = (
        ("model", ("model", "dtype", "attention_backend")),
        ("methods", ("methods", "scales", "original_context", "compare")),
        ("data", ("data", "text_field", "tfds_data_dir", "max_docs", "bos")),
        ("perplexity", ("lengths", "protocol", "stride", "position_buckets", "share_prefix")),
        ("passkey retrieval", ("passkey_lengths", "passkey_trials", "passkey_max_new_tokens", "passkey_dynamic_cache",
                               "seed")),
        ("RULER-style tasks", ("ruler", "ruler_lengths", "ruler_trials", "ruler_haystack", "ruler_chat")),
        ("run", ("out", "recompute_changed")),
    )

    model: str = Field("smollm2", description="HF directory, .gguf file, yarn_jax checkpoint (train's "
                       "RUN/checkpoints or one step of it), local or gs://, or 'smollm2' (the bundled asset)")
    methods: list[str] = Field(["none", "linear", "ntk", "yarn", "dynamic_yarn"],
                               description="method names — none | " + " | ".join(NAMED) + " — each scaled by "
                               "every one of `scales`, or full rope specs (yarn:factor=4,beta_fast=16 or a dict)")
    scales: list[float] = Field([2.0], description="scale factors s for named methods")
    original_context: PositiveInt | None = Field(None, description="L0 for named methods (default: the model's)")
    compare: list[str] = Field([], description="method pairs 'A vs B' (labels, or names at every scale) whose "
                               "paired differences are reported with a 95 % interval")
    lengths: list[int] = Field([2048, 4096, 8192, 16384], description="evaluation lengths in tokens")
    protocol: Literal["truncate", "sliding", "none"] = Field("truncate", description="perplexity protocol")
    stride: PositiveInt = Field(256, description="sliding-window stride S")
    data: str = Field("shakespeare", description="shakespeare | file/dir of .txt/.md | .jsonl | tfds:NAME[:SPLIT]")
    text_field: str | None = Field(None, description="text field of JSONL lines / TFDS examples (default: `text` for "
                                      "JSONL; for TFDS the first of text, book_text, content, article present)")
    tfds_data_dir: str | None = Field(None, description="TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    max_docs: PositiveInt = Field(1, description="documents per length (the first ones long enough)")
    bos: Union[int, Literal["auto", "none"]] = Field("auto", description="BOS prepended to each window: auto (the "
                                                     "model's bos_token_id, if any) | none | a token id")
    position_buckets: PositiveInt = Field(16, description="buckets of the NLL-by-position curve")
    share_prefix: bool = Field(True, description="truncate: score each shorter length from the longest forward "
                               "whose rope frequencies are the same (exact by causality; off: a forward per length)")
    passkey_lengths: list[int] = Field([], description="passkey prompt lengths (empty: no passkey test)")
    passkey_trials: PositiveInt = Field(10, description="trials per passkey length (depths spread uniformly)")
    passkey_max_new_tokens: PositiveInt = Field(10, description="greedy tokens generated per passkey trial")
    passkey_dynamic_cache: bool = Field(False, description="decode length-dependent ropes from the cache "
                                        "(fast, approximate) instead of recomputing (passkey and ruler)")
    seed: int = Field(0, ge=0, description="passkey keys, ruler trials and bootstrap resampling")
    ruler: list[str] = Field([], description="RULER-style tasks: all | " + " | ".join(RULER_TASKS) +
                             " (empty: none)")
    ruler_lengths: list[int] = Field([], description="prompt + answer lengths of the ruler tasks (empty: `lengths`)")
    ruler_trials: PositiveInt = Field(5, description="trials per task and length (depths spread uniformly)")
    ruler_haystack: str = Field("shakespeare", description="text the haystacks and words come from (as --data)")
    ruler_chat: Literal["auto", "on", "off"] = Field("auto", description="wrap prompts in the tokenizer's chat "
                                                     "template: auto (when it ships one) | on | off")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="compute dtype")
    attention_backend: Literal[BACKEND_CHOICES] = Field("auto", description=" | ".join(BACKEND_CHOICES))
    out: str = Field("runs/eval", description="output directory (results are resumed from it)")
    recompute_changed: bool = Field(False, description="when the model, tokenizer or a document changed since "
                                    "the cells in --out were computed: compute new cells instead of refusing")

    @field_validator("lengths", "passkey_lengths", "ruler_lengths")
    @classmethod
    def _positive_lengths(cls, v):
        if any(x < 2 for x in v):
            raise ValueError(f"every length must be >= 2, got {v}")
        return sorted(set(v))

    @field_validator("scales")
    @classmethod
    def _scales(cls, v):
        if not v or any(x < 1 for x in v):
            raise ValueError(f"scales must be a non-empty list of numbers >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _sliding_scores_every_token_once(self):
        """A stride of L or more skips the tokens between one window's end and the next one's start."""
        if self.protocol == "sliding" and self.lengths and self.stride >= min(self.lengths):
            raise ValueError(f"stride {self.stride} must be smaller than every length (the shortest is "
                             f"{min(self.lengths)}): windows S apart with L >= S + 1 positions score every token "
                             "exactly once")
        return self

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if not v:
            raise ValueError("at least one method")
        return v


# Fields that change every result: a run directory refuses to mix results computed under other values.
RESULT_FIELDS = ("model", "data", "text_field", "bos", "dtype", "protocol", "stride", "seed",
                 "passkey_max_new_tokens", "passkey_dynamic_cache")


def load_config(path: str | None = None, overrides: dict | None = None) -> EvalConfig:
    """YAML file (optional) + overrides -> validated EvalConfig (ConfigError naming the field)."""
    return cli_config.load_config(EvalConfig, path, overrides, where="eval config")
