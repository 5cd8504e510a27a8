"""Shared machinery of the command-line configs (eval.py, train.py): pydantic models read from YAML and
overridden by one flag per field, plus the mesh / multi-process fields both commands take.

Flag values are parsed as YAML scalars (`--lengths 2048 4096`, `--mesh-axes '{sequence: 4}'`), except
fields typed as strings (paths, names, rope specs, choices like `off`), which stay strings.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from yarn_jax.attention.kernels import SplashBlocks
from yarn_jax.errors import ConfigError
from yarn_jax.sharding.distributed import DistributedConfig
from yarn_jax.sharding.balance import CONTEXT_PARALLEL, LOAD_BALANCE
from yarn_jax.sharding.mesh import MeshConfig


class ParallelConfig(BaseModel):
    """Device mesh and multi-process settings (see README "Running on a Cloud TPU pod slice")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every float field finite

    mesh: Literal["none", "dp", "fsdp", "fsdp_tensor", "fsdp_sequence"] = Field(
        "none", description="device mesh preset (none: one device)")
    mesh_axes: dict[str, int] = Field({}, description="mesh axis sizes overriding the preset, e.g. "
                                      "'{sequence: 4}'; -1 = the remaining devices")
    mesh_rules: dict[str, Union[str, list[str], None]] = Field(
        {}, description="logical axis -> mesh axes overriding the default rules, e.g. '{mlp: null}'")
    mesh_dcn: dict[str, int] = Field({}, description="multi-slice pods: axis sizes across slices (data or "
                                     "fsdp), e.g. '{data: 2}'; default: the outermost of data/fsdp the slice "
                                     "count divides")
    load_balance: Literal[LOAD_BALANCE] = Field(
        "dual_chunk", description="token layout on the sequence axis: dual_chunk (device r holds chunks r and "
        "2P-1-r of 2P: equal causal attention work) | striped (device r holds every P-th token from r) | none "
        "(contiguous shards)")
    context_parallel: Literal[CONTEXT_PARALLEL] = Field(
        "all_gather", description="attention over the sequence axis: all_gather (each device gathers the whole "
        "sequence's K/V) | ulysses (all-to-all to the whole sequence and a 1/P share of the heads) | ring (K/V "
        "blocks passed around the axis: O(T/P) per device)")
    splash_blocks: dict[str, Union[bool, int]] = Field(
        {}, description="splash attention tile sizes / backward kernel overriding the defaults, e.g. "
        "'{block_q: 1024, fused_bwd: false}' (README 'Splash attention blocks')")
    distributed: Literal["auto", "on", "off"] = Field("auto", description="multi-process: auto (from the flags "
                                                      "below, JAX_* environment, or a TPU VM) | on | off")
    coordinator_address: str | None = Field(None, description="multi-process: host:port of process 0")
    num_processes: int | None = Field(None, description="multi-process: number of processes")
    process_id: int | None = Field(None, description="multi-process: this process's id")

    @field_validator("mesh_axes", "mesh_rules", "mesh_dcn")
    @classmethod
    def _mesh_fields(cls, v, info):
        """Axis names/sizes and rules checked now (the device count at run time)."""
        try:
            MeshConfig(**{info.field_name.removeprefix("mesh_"): v})
        except ValidationError as e:
            raise ValueError("; ".join(err["msg"] for err in e.errors())) from None
        return v

    @field_validator("splash_blocks")
    @classmethod
    def _splash_blocks(cls, v):
        try:
            SplashBlocks.from_dict(v)
        except (ConfigError, TypeError) as e:
            raise ValueError(str(e)) from None
        return v

    def splash(self):
        """The splash attention blocks (defaults overridden by `splash_blocks`)."""
        return SplashBlocks.from_dict(self.splash_blocks)

    def mesh_config(self):
        return MeshConfig(preset=self.mesh, axes=self.mesh_axes, rules=self.mesh_rules, dcn=self.mesh_dcn,
                          load_balance=self.load_balance, context_parallel=self.context_parallel)

    def sharder(self, devices=None):
        """The Sharder of the configured mesh over `devices` (default: all), or None for one device."""
        mesh = self.mesh_config()
        return mesh.sharder(devices) if mesh.enabled else None

    def distributed_config(self):
        return DistributedConfig(mode=self.distributed, coordinator_address=self.coordinator_address,
                                 num_processes=self.num_processes, process_id=self.process_id)


def _validation_message(e: ValidationError, where: str) -> str:
    parts = [f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()]
    return f"{where}: " + "; ".join(parts)


def load_config(cls: type[BaseModel], path: str | None = None, overrides: dict | None = None,
                where: str = "config"):
    """YAML file (optional) + overrides -> a validated `cls` (ConfigError naming the field)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value")
        data.update(loaded)
    data.update(overrides or {})
    try:
        return cls(**data)
    except ValidationError as e:
        raise ConfigError(_validation_message(e, path or where)) from None


def _is_list(annotation) -> bool:
    return typing.get_origin(annotation) is list


def _stays_string(annotation) -> bool:
    """str, str | None, list[str], or a Literal of strings: flag values are kept as typed."""
    origin = typing.get_origin(annotation)
    if annotation is str:
        return True
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin is list:
        return _stays_string(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(args) == 1 and _stays_string(args[0])
    return False


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel]) -> None:
    """One flag per field of cls (lists take several values)."""
    for name, field in cls.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, nargs="+" if _is_list(field.annotation) else None,
                            default=None, help=f"{field.description} (default: {field.default})")


def overrides_from_args(args: argparse.Namespace, cls: type[BaseModel]) -> dict:
    def parse(v):
        if isinstance(v, list):
            return [parse(x) for x in v]
        try:
            return yaml.safe_load(v)
        except yaml.YAMLError:
            return v  # not YAML: the field's validation names it

    out = {}
    for name, field in cls.model_fields.items():
        value = getattr(args, name, None)
        if value is not None:
            # paths, names, rope specs and string choices stay strings even if they look like YAML
            out[name] = value if _stays_string(field.annotation) else parse(value)
    return out
