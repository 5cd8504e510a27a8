"""Shared machinery of the command-line configs (eval.py, train.py): pydantic models read from YAML and
overridden by one flag per field, plus the mesh / multi-process fields both commands take.

Flag values are parsed as YAML scalars (`--lengths 2048 4096`, `--mesh-axes '{sequence: 4}'`), except
fields typed as strings (paths, names, rope specs, choices like `off`), which stay strings.
"""

from __future__ import annotations

import argparse
import json
import re
import types
import typing
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from yarn_jax.attention.kernels import SplashBlocks
from yarn_jax.errors import CommandParser, ConfigError
from yarn_jax.sharding.distributed import DistributedConfig
from yarn_jax.sharding.balance import CONTEXT_PARALLEL, LOAD_BALANCE
from yarn_jax.sharding.mesh import MeshConfig


class ParallelConfig(BaseModel):
    """Device mesh and multi-process settings (see docs/pods.md)."""

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
        "'{block_q: 1024, fused_bwd: false}' (docs/attention.md, splash attention blocks)")
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


def _validation_message(e: ValidationError, where: str, path: str | None, overrides: dict, flags: bool) -> str:
    """One line naming each bad field and where its value came from: a flag, the YAML file, or the default."""
    parts = []
    for err in e.errors():
        loc = ".".join(map(str, err["loc"]))
        field = str(err["loc"][0]) if err["loc"] else None
        if field in overrides:
            origin = f"--{field.replace('_', '-')}" if flags else where
        elif field is not None and path is not None:
            origin = path
        else:
            origin = None
        parts.append(f"{loc or '(the settings together)'}{f' (from {origin})' if origin else ''}: {err['msg']}")
    return f"{where}: " + "; ".join(parts)


def read_yaml(path: str) -> dict:
    """A YAML config file's mapping (ConfigError naming the file when missing or malformed)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value")
    return loaded


def load_config(cls: type[BaseModel], path: str | None = None, overrides: dict | None = None,
                where: str = "config", flags: bool = False):
    """YAML file (optional) + overrides (command-line flags when `flags`) -> a validated `cls`; a bad value
    is a ConfigError naming the field and where the value came from."""
    data: dict = read_yaml(path) if path is not None else {}
    data.update(overrides or {})
    try:
        return cls(**data)
    except ValidationError as e:
        raise ConfigError(_validation_message(e, where, path, overrides or {}, flags)) from None


def config_command(cls: type[BaseModel], run, report, *, prog: str, description: str, where: str):
    """The main(argv) of a command whose settings are `cls`: parse them (`parse_command`), `run(cfg, note=...)`,
    and print `report(cfg, result)` as one JSON line on stdout (process 0 of a multi-process run) for the
    scripts that read it — when stdout is a pipe or file; on a terminal, where a person has read the
    tables already, one short line saying where the results are."""
    def main(argv=None) -> int:
        import sys

        import jax

        cfg, note = parse_command(cls, argv, prog=prog, description=description, where=where)
        result = run(cfg, note=note)
        if jax.process_index() == 0:
            payload = report(cfg, result)
            if sys.stdout.isatty():
                print(f"results in {payload['out']} (piped, this command prints them as one JSON line)")
            else:
                print(json.dumps(payload))
        return 0

    return main


def parse_command(cls: type[BaseModel], argv, *, prog: str, description: str, where: str):
    """A command whose settings are `cls`: `--config YAML` plus one flag per field, grouped by section, each
    flag's help showing the value that will run (the YAML's when it sets it, else the default). Returns the
    (validated settings, a line naming the config file and the values it set — no flag overrode them — for
    the command to print when its run starts, or None)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    file_values = read_yaml(known.config) if known.config else {}
    parser = CommandParser(prog=prog, description=description, usage="%(prog)s [--config YAML] [--SETTING "
                                     "VALUE ...]", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="YAML", help="YAML file of settings (flags override it; without "
                        "one, the defaults below)")
    add_config_flags(parser, cls, file_values, known.config)
    args = parser.parse_args(argv)
    overrides = overrides_from_args(args, cls)
    cfg = load_config(cls, args.config, overrides, where=where, flags=True)
    from_file = {k: v for k, v in file_values.items() if k not in overrides}
    note = (f"{args.config} sets " + ", ".join(f"{k}={_show(v)}" for k, v in from_file.items())) if from_file else None
    return cfg, note


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


PARALLEL_FLAGS = "parallelism: device mesh, context parallelism, processes"


def _show(value) -> str:
    """A value as it would be typed: lists space-separated, mappings as YAML flow, None as null."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return " ".join(_show(v) for v in value) or "[]"
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip() or "{}"
    return str(value)


def _choices(annotation) -> list[str] | None:
    """The values of a Literal of strings (argparse choices), else None."""
    if typing.get_origin(annotation) is Literal and all(isinstance(a, str) for a in typing.get_args(annotation)):
        return list(typing.get_args(annotation))
    return None


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel], file_values: dict | None = None,
                     source: str | None = None) -> None:
    """One flag per field of cls, in the sections of `cls.FLAG_SECTIONS` (then parallelism, then any other):
    lists take several values, booleans are --flag / --no-flag, string choices are listed. Each help ends
    with the value that will run: the config file's (`file_values`, read from `source`) or the default."""
    file_values = file_values or {}
    sections = [*getattr(cls, "FLAG_SECTIONS", ()), (PARALLEL_FLAGS, tuple(ParallelConfig.model_fields))]
    placed: set[str] = set()
    for title, names in [*sections, ("other", tuple(cls.model_fields))]:
        names = [n for n in names if n in cls.model_fields and n not in placed]
        if not names:
            continue
        group = parser.add_argument_group(title)
        for name in names:
            placed.add(name)
            field = cls.model_fields[name]
            value = file_values.get(name, field.default)
            description = (field.description or "").replace("%", "%%")
            if value is None and name not in file_values and "default" in description:
                text = description  # the description says what an unset value means
            else:  # one default: the value that runs (a description's own "(default: ...)" gives way)
                origin = f", from {source}" if name in file_values else ""
                text = (f"{re.sub(r' *[(]default: [^)]*[)]$', '', description)} "
                        f"(default: {_show(value).replace('%', '%%')}{origin})")
            flag = f"--{name.replace('_', '-')}"
            if field.annotation is bool:
                group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
            else:
                choices = _choices(field.annotation)
                group.add_argument(flag, dest=name, nargs="+" if _is_list(field.annotation) else None, default=None,
                                   choices=choices, metavar=None if choices else name.upper(), help=text)


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
        if isinstance(value, bool):  # --flag / --no-flag
            out[name] = value
        elif value is not None:
            # paths, names, rope specs and string choices stay strings even if they look like YAML
            out[name] = value if _stays_string(field.annotation) else parse(value)
    return out
