"""Logical axis names -> mesh axes: the `Sharder` a model holds (a static part of it, like its attention
backend) and applies to its activations while it is traced.

Every parameter carries logical names (`model.py`); activations are annotated with `batch`, `length`,
`heads`, `kv_heads`, `head_dim` (and None for an unsharded embedding of activations). A rule maps a
logical name to mesh axes. A dimension whose size the mapped axes do not divide is replicated over them
instead (e.g. SmolLM2's 3 KV heads on a tensor axis of 2); `Sharder.fallbacks` lists where that happened.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from yarn_jax.errors import ConfigError
from yarn_jax.sharding.balance import CONTEXT_PARALLEL, LOAD_BALANCE, balanced_order

Rule = tuple[str, "str | tuple[str, ...] | None"]

DEFAULT_RULES: tuple[Rule, ...] = (
    ("batch", ("data", "fsdp")),  # activations: a sequence's tokens stay on one data/fsdp group
    ("length", "sequence"),
    ("embed", ("fsdp", "sequence")),  # parameters: ZeRO-3 style, the model dimension split over fsdp (and
    # over the sequence axis too: its devices hold different tokens, not different parameters)
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class Sharder:
    """A mesh plus logical rules: shardings for named arrays, and constraints inside traced code.
    Hashable (mesh and rules; `fallbacks` is a log, not part of the identity), so a model can hold it as
    static structure."""

    mesh: Mesh
    rules: Sequence[Rule] = DEFAULT_RULES
    fallbacks: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)
    load_balance: str = "dual_chunk"  # the token layout on the sequence axis (`sharding/balance.py`)
    context_parallel: str = "all_gather"  # attention over the sequence axis: all_gather | ulysses

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                                                for name, axes in self.rules))
        if self.load_balance not in LOAD_BALANCE:
            raise ConfigError(f"load_balance {self.load_balance!r}: choose from {list(LOAD_BALANCE)}")
        if self.context_parallel not in CONTEXT_PARALLEL:
            raise ConfigError(f"context_parallel {self.context_parallel!r}: choose from {list(CONTEXT_PARALLEL)}")

    def axes(self, name: str | None) -> tuple[str, ...]:
        """Mesh axes (of size > 1) a logical name maps to."""
        if name is None:
            return ()
        for logical, mesh_axes in self.rules:
            if logical == name:
                mesh_axes = () if mesh_axes is None else (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
                return tuple(a for a in mesh_axes if self.mesh.shape[a] > 1)
        raise KeyError(f"no sharding rule for logical axis {name!r}; rules cover {[r[0] for r in self.rules]}")

    def spec(self, names: Sequence[str | None], shape: Sequence[int], what: str = "") -> P:
        """PartitionSpec for an array of `shape` whose dims have logical `names`. A mesh axis is used once;
        a dim its axes do not divide drops trailing axes until they do (recorded in `fallbacks`)."""
        if len(names) != len(shape):
            raise ValueError(f"{what or 'array'}: {len(names)} logical names {tuple(names)} for shape {tuple(shape)}")
        used: set[str] = set()
        out = []
        for name, size in zip(names, shape):
            axes = [a for a in self.axes(name) if a not in used]
            wanted = tuple(axes)
            while axes and size % math.prod(self.mesh.shape[a] for a in axes):
                axes.pop()
            if tuple(axes) != wanted and what:
                self.fallbacks[what] = f"{name}={size} not divisible by {wanted}: sharded over {tuple(axes) or 'nothing'}"
            used.update(axes)
            out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
        return P(*out)

    def named(self, names, shape, what: str = "") -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(names, shape, what))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def constrain(self, x, names):
        return jax.lax.with_sharding_constraint(x, self.named(names, x.shape, what=f"activations {tuple(names)}"))

    def size(self, axis: str) -> int:
        return self.mesh.shape[axis]

    def sequence_shards(self, t: int) -> int:
        """How many devices a length-t sequence is split over (1 when the length is not sharded)."""
        axes = self.spec(("length",), (t,))[0]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        return math.prod(self.mesh.shape[a] for a in axes)

    def sequence_order(self, t: int):
        """The balanced token order of a length-t sequence ([t] ints), or None when it stays contiguous."""
        return balanced_order(t, self.sequence_shards(t), self.load_balance)

    @property
    def platform(self) -> str:
        """The platform of the mesh's devices ("tpu" for a TPU topology compiled from a CPU host)."""
        return self.mesh.devices.flat[0].platform


def constrain(x, names, sharder: Sharder | None):
    """with_sharding_constraint by logical names under `sharder`; the identity without one."""
    return x if sharder is None else sharder.constrain(x, names)
