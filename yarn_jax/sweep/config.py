"""Sweep configuration (configs/sweeps/*.yaml): a base model, shared fine-tuning and evaluation settings,
and grids of cells. Read from YAML, overridden by `--set dotted.key=value` (the value is YAML), validated
by pydantic before anything runs; a bad value fails naming its field.

    name: repro_small
    out: runs/sweeps/repro_small
    model: smollm2                 # or `scratch:` (a small LLaMA pretrained here, see ScratchConfig)
    train: {batch_size: 4, ...}    # TrainConfig fields shared by every fine-tuned cell
    eval: {lengths: [...], ...}    # EvalConfig fields shared by every cell
    grids:
      - {methods: [linear, ntk, ntk_by_parts, yarn], scales: [4, 8], finetune_steps: [60], seeds: [0, 1]}
      - {methods: [none, linear, ntk, dynamic, yarn, dynamic_yarn], scales: [4, 8]}   # no fine-tuning
      - {methods: [yarn], scales: [4], finetune_steps: [60], vary: {learning_rate: [1e-4, 3e-4]}}
      - {methods: [yarn, dynamic_yarn], scales: [2], vary: {temperature: [0, 0.07, 0.1]}}   # a rope parameter
"""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from yarn_jax.cli_config import load_config
from yarn_jax.errors import ConfigError
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.rope import METHODS, NAMED
from yarn_jax.rope.config import L0
from yarn_jax.training.config import TrainConfig

# set by the sweep for each cell: not allowed in the shared `train` / `eval` sections
TRAIN_OWNED = ("model", "rope", "steps", "seed", "out")
EVAL_OWNED = ("model", "methods", "scales", "original_context", "out")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ScratchConfig(_Strict):
    """A small LLaMA trained here: the corpus split, a BPE tokenizer, random init, pretraining at L0."""

    heldout: list[str] | PositiveInt = Field(6, description="held-out document names, or the last N documents")
    vocab_size: PositiveInt = Field(4096, description="BPE vocabulary (tokenizers, byte level)")
    model: dict[str, Any] = Field(description="HF LLaMA config fields: hidden_size, intermediate_size, "
                                  "num_hidden_layers, num_attention_heads, num_key_value_heads, rope_theta, "
                                  "max_position_embeddings (= L0)")
    init_seed: int = 0
    pretrain: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields of the pretraining "
                                     "run (its rope is the default RoPE; data = the train split)")


class Grid(_Strict):
    methods: list[str] = Field(min_length=1, description="method names (evaluation.methods) or rope specs")
    scales: list[Annotated[float, Field(ge=1)]] = Field([1.0], min_length=1, description="scale factors s >= 1")
    finetune_steps: list[NonNegativeInt] = Field([0], min_length=1, description="0 = evaluate without "
                                                 "fine-tuning")
    seeds: list[int] = Field([0], min_length=1, description="fine-tuning data order (ignored without "
                             "fine-tuning)")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields for this grid's cells")
    vary: dict[str, list[Any]] = Field(default_factory=dict, description="TrainConfig field or a parameter of "
                                       "the grid's named rope methods (e.g. temperature, beta_fast) -> values: "
                                       "extra axes of the grid (hyperparameter and method ablations)")

    def rope_keys(self) -> list[str]:
        """The `vary` keys that are rope parameters (the others are TrainConfig fields)."""
        return sorted(k for k in self.vary if k not in TrainConfig.model_fields)


class SweepConfig(_Strict):
    name: str
    out: str = Field(description="sweep directory: setup/, cells/<id>/, table.md, table.csv, plots")
    model: str | None = Field(None, description="base model (as eval.py's --model); or `scratch`")
    scratch: ScratchConfig | None = None
    data: str = Field("shakespeare", description="corpus; with `scratch` it is split into train/heldout")
    original_context: PositiveInt | None = Field(None, description="L0 (default: the base model's)")
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    grids: list[Grid] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self):
        if (self.model is None) == (self.scratch is None):
            raise ValueError("give exactly one of `model` and `scratch`")
        for section, owned in (("train", TRAIN_OWNED), ("eval", EVAL_OWNED)):
            bad = sorted(set(getattr(self, section)) & set(owned))
            if bad:
                raise ValueError(f"{section}: {bad} are set per cell by the sweep")
        for i, g in enumerate(self.grids):
            bad = sorted((set(g.train) | set(g.vary)) & set(TRAIN_OWNED))
            if bad:
                raise ValueError(f"grids[{i}]: {bad} are set per cell by the sweep")
            unknown = sorted(set(g.train) - set(TrainConfig.model_fields))
            if unknown:
                raise ValueError(f"grids[{i}]: {unknown} are not TrainConfig fields")
            for k in g.rope_keys():
                takes = [m for m in g.methods if m in NAMED and k in METHODS[m].keys() - {"factor", L0}]
                if takes != g.methods:
                    bad = [m for m in g.methods if m not in takes]
                    raise ValueError(f"grids[{i}].vary: {k!r} is neither a TrainConfig field nor a parameter of "
                                     f"the named rope method(s) {bad}")
        for section, cls in (("train", TrainConfig), ("eval", EvalConfig)):
            unknown = sorted(set(getattr(self, section)) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"{section}: {unknown} are not {cls.__name__} fields")
        return self


def _set_dotted(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = d
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_sweep(path: str, sets: list[str] | None = None) -> SweepConfig:
    """YAML + `key.path=value` overrides (value parsed as YAML; list items by index: grids.0.scales=[4])."""
    try:
        raw = yaml.safe_load(open(path, encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep config {path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep config {path}: expected a mapping at the top level")
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        try:
            _set_dotted(raw, key, yaml.safe_load(value))
        except (IndexError, ValueError, TypeError) as e:
            raise ConfigError(f"--set {item!r}: {key} does not address an entry of the config ({e})") from None
    return load_config(SweepConfig, None, raw, where=f"sweep config {path}")
