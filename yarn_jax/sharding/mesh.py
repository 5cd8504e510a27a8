"""Device meshes from configuration: named axes `data`, `fsdp`, `sequence`, `tensor`, with presets.

Axis order is outermost (slowest links) to innermost: `data` (pure replicas, gradient all-reduce once per
step), `fsdp` (parameters and optimizer state sharded, all-gathered per layer), `sequence` (activations
split along the tokens; attention gathers keys/values), `tensor` (heads, MLP and vocabulary split; most
communication, so the innermost, fastest links). One size may be -1: it takes the devices left over.

Multi-slice pods (several TPU slices joined by the data-center network, DCN): an axis may span slices
only if it is `data` or `fsdp` (`dcn` sizes; default: the outermost of them the slice count divides);
`sequence` and `tensor` communicate every layer and stay on the fast in-slice links (ICI). The device
order comes from jax's hybrid mesh: slices outermost within each DCN-spanning axis.

Meshes use Auto axis types (the SPMD partitioner propagates shardings from the ones we set); jax >= 0.10's
`jax.make_mesh` would otherwise default to Explicit axes.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import jax
import numpy as np
from jax.sharding import AxisType, Mesh
from pydantic import BaseModel, ConfigDict, Field, field_validator

from yarn_jax.errors import ConfigError
from yarn_jax.sharding.balance import CONTEXT_PARALLEL, LOAD_BALANCE
from yarn_jax.sharding.rules import DEFAULT_RULES, Sharder

AXES = ("data", "fsdp", "sequence", "tensor")
DCN_AXES = ("data", "fsdp")  # the axes that may span slices

# Which preset for which job (docs/pods.md):
PRESETS: dict[str, dict[str, int]] = {
    "none": {},  # one device, no mesh
    "dp": {"data": -1},  # model fits a device: replicate it, split the batch
    "fsdp": {"fsdp": -1},  # model + optimizer do not fit one device: shard them over all devices
    "fsdp_tensor": {"fsdp": -1, "tensor": 2},  # big models / few sequences per device: also split heads
    "fsdp_sequence": {"fsdp": -1, "sequence": 2},  # long contexts: also split the tokens of a sequence
}


class MeshConfig(BaseModel):
    """`preset` sets the axis sizes; `axes` overrides any of them ({"tensor": 4}); -1 = the rest."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal[tuple(PRESETS)] = Field("none", description=" | ".join(PRESETS) + " (none: one device)")
    axes: dict[str, int] = Field(default_factory=dict, description="axis sizes overriding the preset, "
                                 "e.g. {fsdp: 4, tensor: 2}; -1 takes the remaining devices")

    rules: dict[str, Union[str, list[str], None]] = Field(
        default_factory=dict, description="logical axis -> mesh axes, overriding the default rules, e.g. "
        "{embed: fsdp, mlp: null}")

    dcn: dict[str, int] = Field(default_factory=dict, description="multi-slice: axis sizes across slices "
                                "(data/fsdp only), e.g. {data: 2}")
    load_balance: Literal[LOAD_BALANCE] = Field(
        "dual_chunk", description="token layout on the sequence axis: dual_chunk (device r holds chunks r and "
        "2P-1-r: equal causal work) | striped (every P-th token from r) | none (contiguous)")
    context_parallel: Literal[CONTEXT_PARALLEL] = Field(
        "all_gather", description="attention over the sequence axis: all_gather (every device gathers all K/V) | "
        "ulysses (all-to-all: whole sequence, a share of the heads) | ring (K/V blocks around the axis)")

    @field_validator("dcn")
    @classmethod
    def _dcn(cls, v):
        bad = sorted(set(v) - set(DCN_AXES))
        if bad:
            raise ValueError(f"only {list(DCN_AXES)} may span slices (sequence and tensor need the in-slice "
                             f"links), got {bad}")
        if any(n < 1 for n in v.values()):
            raise ValueError(f"slice counts must be positive, got {v}")
        return v

    @field_validator("rules")
    @classmethod
    def _rules(cls, v):
        known = {name for name, _ in DEFAULT_RULES} | {"batch", "length"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"no logical axis {unknown}; logical axes are {sorted(known)}")
        for name, axes in v.items():
            if set([axes] if isinstance(axes, str) else axes or []) - set(AXES):
                raise ValueError(f"rule {name}: mesh axes must be among {list(AXES)}, got {axes!r}")
        return v

    def sharder(self, devices=None):
        """A Sharder over this mesh with the default rules updated by `rules`."""
        rules = [(name, tuple(self.rules[name]) if isinstance(self.rules.get(name), list) else self.rules[name])
                 if name in self.rules else (name, axes) for name, axes in DEFAULT_RULES]
        return Sharder(make_mesh(self, devices), tuple(rules), load_balance=self.load_balance,
                       context_parallel=self.context_parallel)

    @field_validator("axes")
    @classmethod
    def _axes(cls, v):
        unknown = sorted(set(v) - set(AXES))
        if unknown:
            raise ValueError(f"unknown mesh axes {unknown}; axes are {list(AXES)}")
        if any(n == 0 or n < -1 for n in v.values()):
            raise ValueError(f"axis sizes must be positive or -1, got {v}")
        if sum(n == -1 for n in v.values()) > 1:
            raise ValueError(f"at most one axis may be -1, got {v}")
        return v

    @property
    def enabled(self) -> bool:
        return self.preset != "none" or bool(self.axes)

    def sizes(self, n_devices: int) -> dict[str, int]:
        """Axis sizes for n_devices (ConfigError when they do not multiply to it)."""
        preset = PRESETS[self.preset]
        if -1 in self.axes.values():  # the override's -1 replaces the preset's
            preset = {a: n for a, n in preset.items() if n != -1}
        sizes = {a: 1 for a in AXES} | preset | self.axes
        fixed = math.prod(n for n in sizes.values() if n != -1)
        if -1 in sizes.values():
            if n_devices % fixed:
                raise ConfigError(f"mesh {self._describe(sizes)}: {n_devices} devices are not divisible by the "
                                  f"fixed axis sizes' product {fixed}")
            sizes = {a: (n_devices // fixed if n == -1 else n) for a, n in sizes.items()}
        if math.prod(sizes.values()) != n_devices:
            raise ConfigError(f"mesh {self._describe(sizes)} needs {math.prod(sizes.values())} devices, "
                              f"{n_devices} are available")
        return sizes

    def dcn_sizes(self, sizes: dict[str, int], slices: int) -> dict[str, int]:
        """Per-axis slice counts for `slices` slices (ConfigError when they do not fit the axis sizes)."""
        if slices == 1:
            if math.prod(self.dcn.values() or [1]) > 1:
                raise ConfigError(f"mesh dcn {self.dcn} spans slices, but the devices form one slice")
            return {a: 1 for a in AXES}
        dcn = dict(self.dcn)
        if not dcn:  # the outermost of data/fsdp the slice count divides
            for axis in DCN_AXES:
                if sizes[axis] % slices == 0:
                    dcn = {axis: slices}
                    break
            else:
                raise ConfigError(f"mesh {self._describe(sizes)}: neither data nor fsdp is divisible by the "
                                  f"{slices} slices; set the mesh so that one of them is")
        if math.prod(dcn.values()) != slices:
            raise ConfigError(f"mesh dcn {dcn} spans {math.prod(dcn.values())} slices, the devices form {slices}")
        for axis, n in dcn.items():
            if sizes[axis] % n:
                raise ConfigError(f"mesh dcn {axis}={n}: the {axis} axis ({sizes[axis]}) is not divisible by it")
        return {a: dcn.get(a, 1) for a in AXES}

    def _describe(self, sizes) -> str:
        return f"(preset {self.preset!r}, axes " + ", ".join(f"{a}={n}" for a, n in sizes.items()) + ")"


def slice_count(devices) -> int:
    """How many slices the devices form (TPU multi-slice devices carry `slice_index`; others are one)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """The mesh over `devices` (default: every device of every process), topology-aware on TPU/GPU; over
    several slices, a hybrid mesh whose data/fsdp axes span them (`MeshConfig.dcn`)."""
    devices = jax.devices() if devices is None else list(devices)
    sizes = cfg.sizes(len(devices))
    shape = tuple(sizes[a] for a in AXES)
    slices = slice_count(devices)
    dcn = cfg.dcn_sizes(sizes, slices)
    if slices > 1:
        from jax.experimental import mesh_utils

        ici = tuple(sizes[a] // dcn[a] for a in AXES)
        grid = mesh_utils.create_hybrid_device_mesh(ici, tuple(dcn[a] for a in AXES), devices,
                                                    allow_split_physical_axes=True)
        return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    if devices[0].platform == "tpu":
        # topology-aware; a logical axis may take part of a physical one (fsdp 8 x sequence 8 on v5p-128's
        # 4x4x4 torus: jax.make_mesh refuses that shape on v4/v5p)
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))
