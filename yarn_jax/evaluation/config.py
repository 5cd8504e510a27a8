"""The evaluation configuration: a pydantic model, read from YAML and overridden from the command line.

Every field is also a flag of eval.py (`--lengths 2048 4096`, `--methods none yarn`, `--protocol
sliding`); a bad value fails before any compute with a message naming the field.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from yarn_jax.errors import ConfigError


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2", description="HF directory, .gguf file, or 'smollm2' (the bundled asset)")
    methods: list[str] = Field(["none", "linear", "ntk", "yarn", "dynamic_yarn"],
                               description="method names (scaled by each of `scales`) or full rope specs")
    scales: list[float] = Field([2.0], description="scale factors s for named methods")
    original_context: int | None = Field(None, description="L0 for named methods (default: the model's)")
    lengths: list[int] = Field([2048, 4096, 8192, 16384], description="evaluation lengths in tokens")
    protocol: Literal["truncate", "sliding", "none"] = Field("truncate", description="perplexity protocol")
    stride: int = Field(256, description="sliding-window stride S")
    data: str = Field("shakespeare", description="shakespeare | file/dir of .txt/.md | .jsonl | tfds:NAME[:SPLIT]")
    text_field: str | None = Field(None, description="JSONL/TFDS text field")
    tfds_data_dir: str | None = Field(None, description="TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    max_docs: int = Field(1, description="documents per length (the first ones long enough)")
    bos: Union[int, Literal["auto", "none"]] = Field("auto", description="BOS id prepended to each window")
    position_buckets: int = Field(16, description="buckets of the NLL-by-position curve")
    passkey_lengths: list[int] = Field([], description="passkey prompt lengths (empty: no passkey test)")
    passkey_trials: int = Field(10, description="trials per passkey length (depths spread uniformly)")
    passkey_max_new_tokens: int = Field(10, description="greedy tokens generated per passkey trial")
    passkey_dynamic_cache: bool = Field(False, description="decode length-dependent ropes from the cache "
                                        "(fast, approximate) instead of recomputing")
    seed: int = Field(0, description="passkey keys")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="compute dtype")
    attention_backend: str = Field("auto", description="auto | blockwise | splash | gpu_flash | reference")
    out: str = Field("runs/eval", description="output directory (results are resumed from it)")
    mesh: Literal["none", "dp", "fsdp", "fsdp_tensor", "fsdp_sequence"] = Field(
        "none", description="device mesh preset (none: one device)")
    mesh_axes: dict[str, int] = Field({}, description="mesh axis sizes overriding the preset, e.g. "
                                      "'{sequence: 4}'; -1 = the remaining devices")
    mesh_rules: dict[str, Union[str, list[str], None]] = Field(
        {}, description="logical axis -> mesh axes overriding the default rules, e.g. '{mlp: null}'")
    distributed: Literal["auto", "on", "off"] = Field("auto", description="multi-process: auto (from the flags "
                                                      "below, JAX_* environment, or a TPU pod) | on | off")
    coordinator_address: str | None = Field(None, description="multi-process: host:port of process 0")
    num_processes: int | None = Field(None, description="multi-process: number of processes")
    process_id: int | None = Field(None, description="multi-process: this process's id")

    @field_validator("mesh_axes", "mesh_rules")
    @classmethod
    def _mesh_fields(cls, v, info):
        """Axis names/sizes and rules checked now (the device count at run time)."""
        from pydantic import ValidationError as _VE

        from yarn_jax.sharding.mesh import MeshConfig

        try:
            MeshConfig(**{info.field_name.removeprefix("mesh_"): v})
        except _VE as e:
            raise ValueError("; ".join(err["msg"] for err in e.errors())) from None
        return v

    def mesh_config(self):
        from yarn_jax.sharding.mesh import MeshConfig

        return MeshConfig(preset=self.mesh, axes=self.mesh_axes, rules=self.mesh_rules)

    def distributed_config(self):
        from yarn_jax.sharding.distributed import DistributedConfig

        return DistributedConfig(mode=self.distributed, coordinator_address=self.coordinator_address,
                                 num_processes=self.num_processes, process_id=self.process_id)

    @field_validator("lengths", "passkey_lengths")
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

    @field_validator("stride", "max_docs", "position_buckets", "passkey_trials", "passkey_max_new_tokens")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if not v:
            raise ValueError("at least one method")
        return v


# Fields that change every result: a run directory refuses to mix results computed under other values.
RESULT_FIELDS = ("model", "data", "text_field", "bos", "dtype", "protocol", "stride", "seed",
                 "passkey_max_new_tokens", "passkey_dynamic_cache")


def _validation_message(e: ValidationError, where: str) -> str:
    parts = [f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()]
    return f"{where}: " + "; ".join(parts)


def load_config(path: str | None = None, overrides: dict | None = None) -> EvalConfig:
    """YAML file (optional) + overrides -> validated EvalConfig (ConfigError naming the field)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value")
        data.update(loaded)
    data.update(overrides or {})
    try:
        return EvalConfig(**data)
    except ValidationError as e:
        raise ConfigError(_validation_message(e, path or "eval config")) from None


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per EvalConfig field (lists take several values; values are parsed as YAML scalars)."""
    for name, field in EvalConfig.model_fields.items():
        is_list = typing.get_origin(field.annotation) is list
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, nargs="+" if is_list else None,
                            default=None, help=f"{field.description} (default: {field.default})")


def overrides_from_args(args: argparse.Namespace) -> dict:
    def parse(v):
        return [parse(x) for x in v] if isinstance(v, list) else yaml.safe_load(v)

    out = {}
    for name in EvalConfig.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = parse(value)
            if name in ("model", "data", "out", "text_field", "attention_backend", "methods",
                        "tfds_data_dir", "coordinator_address"):
                # paths, names and rope specs stay strings even if they look like numbers or JSON
                out[name] = [str(v) for v in value] if isinstance(value, list) else str(value)
    return out
