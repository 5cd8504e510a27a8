"""What a compiled program does per step, read from its optimized HLO text: the collectives (kind, the
mesh axes their device groups span, whether they cross slices, count and bytes per step) and the Mosaic
kernels, with every instruction counted as often as it runs — a `while` body (the scanned layers, the
chunked loss head) times its trip count. (`cost_analysis()` counts a loop body once, so it cannot
answer this.)
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import numpy as np

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
          "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) ")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = ")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def array_bytes(shape: str) -> float:
    """Bytes of every array in an HLO shape string (a tuple's elements summed)."""
    return sum(_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in _ARRAY.findall(shape))


def _largest_array(shape: str) -> float:
    return max((_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in _ARRAY.findall(shape)),
               default=0)


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    rest: str  # operands and attributes


def _split(line: str) -> Instruction | None:
    m = _INSTR.match(line)
    if not m:
        return None
    body = line[m.end():]
    if body.startswith("("):  # a tuple shape: up to its matching parenthesis
        depth = 0
        for i, c in enumerate(body):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                break
        shape, tail = body[:i + 1], body[i + 1:].lstrip()
    else:
        shape, _, tail = body.partition(" ")
    opcode, _, rest = tail.partition("(")
    return Instruction(m.group(1), shape, opcode.strip(), rest)


def parse_computations(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """{computation name: its instructions}, and the entry computation's name."""
    comps: dict[str, list[Instruction]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = _HEADER.match(line)
            if m:
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is not None:
            ins = _split(line)
            if ins is not None:
                comps[current].append(ins)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def _trip_count(ins: Instruction, comps) -> int | None:
    """A while loop's trip count: XLA's known_trip_count, else `i < N` in its condition (jax loops count
    from 0)."""
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.rest)
    if m:
        return int(m.group(1))
    cond = re.search(r"condition=%?([\w.\-]+)", ins.rest)
    body = comps.get(cond.group(1), []) if cond else []
    consts = [int(c) for i in body if i.opcode == "constant" for c in re.findall(r"^(-?\d+)\)", i.rest)]
    if len(consts) == 1 and body and body[-1].opcode == "compare" and "direction=LT" in body[-1].rest:
        return consts[0]
    return None


def multiplicities(comps, entry) -> tuple[dict[str, float], int]:
    """How many times each computation runs per execution of the entry, and how many loops had no
    readable trip count (counted once)."""
    callers: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    unknown = 0
    for cname, body in comps.items():
        for ins in body:
            trip = None
            if ins.opcode == "while":
                trip = _trip_count(ins, comps)
                unknown += trip is None
            for kind, callee in _CALLEE.findall(ins.rest):
                callers[callee].append((cname, (trip or 1) if kind == "body" else 1))
            for group in _BRANCHES.findall(ins.rest):  # one branch runs per device: 1/n of each (the
                branches = re.findall(r"%?([\w.\-]+)", group)  # per-device mean; exact when each runs as often)
                for callee in branches:
                    callers[callee].append((cname, 1 / len(branches)))
    memo: dict[str, int] = {entry: 1}

    def mult(name, seen=()):
        if name not in memo:
            memo[name] = 0 if name in seen else sum(mult(c, seen + (name,)) * f for c, f in callers.get(name, []))
        return memo[name]

    return {name: mult(name) for name in comps}, unknown


def replica_groups(rest: str, n_devices: int) -> list[list[int]] | None:
    """Device groups (logical ids) of a collective, from any of HLO's spellings; None if unreadable."""
    m = re.search(r"replica_groups=\{((?:\{[\d,\s]*\},?\s*)*)\}", rest)
    if m:
        groups = [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([\d,\s]*)\}", m.group(1))]
        return groups or [list(range(n_devices))]
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", rest)
    if m:
        shape = [int(x) for x in m.group(1).split(",")]
        ids = np.arange(math.prod(int(x) for x in m.group(2).split(","))).reshape(
            [int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
        return ids.reshape(shape[0], -1).tolist()
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
    if m:
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        varying = [names.index(a) for a in re.findall(r"'([^']+)'", m.group(2))]
        ids = np.arange(math.prod(sizes)).reshape(sizes)
        fixed = [i for i in range(len(sizes)) if i not in varying]
        return ids.transpose(fixed + varying).reshape(-1, math.prod(sizes[i] for i in varying) or 1).tolist()
    m = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", rest)
    if m:
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", m.group(1))]
    return None


def _varies(grid: np.ndarray, axis: int) -> bool:
    """Whether values change along `axis` of grid."""
    return bool((np.diff(grid, axis=axis) != 0).any()) if grid.shape[axis] > 1 else False


@dataclasses.dataclass
class CollectiveStats:
    kind: str
    axes: tuple[str, ...]  # the mesh axes the device groups span
    group_size: int
    crosses_slices: bool
    count: int = 0  # per step
    bytes: float = 0.0  # per step, per device: the full buffer each collective moves

    def key(self):
        return self.kind, self.axes, self.group_size, self.crosses_slices


_KERNEL_TARGETS = r'custom_call_target="(tpu_custom_call|__gpu\$xla\.gpu\.triton)"'  # Mosaic (TPU), Triton (GPU)
_MEGASCALE = re.compile(r'_xla_megascale_transfer_type="([A-Z_]+)"')
_MEGASCALE_KINDS = {"ALL_GATHER": "all-gather", "ALL_REDUCE": "all-reduce", "REDUCE_SCATTER": "reduce-scatter",
                    "ALL_TO_ALL": "all-to-all", "ONE_TO_ONE": "collective-permute"}  # between slices


def collectives(text: str, mesh) -> tuple[list[CollectiveStats], dict]:
    """Per-step collectives of a compiled program on `mesh`, grouped by kind and the mesh axes they span;
    plus totals (Mosaic kernels, unreadable loops).

    One slice: logical device i = mesh.devices.flat[i]. Several slices: XLA compiles one program per
    slice (its collectives' groups are slice-local ids: the i-th device of a slice in mesh order) and
    moves data between slices with host transfers to the multi-slice (MegaScale) runtime, `send`s
    tagged with the collective they implement: those are the DCN collectives, over the mesh axes along
    which the slice changes."""
    comps, entry = parse_computations(text)
    mult, unknown_loops = multiplicities(comps, entry)
    slices_all = np.array([getattr(d, "slice_index", 0) or 0 for d in mesh.devices.flat])
    n_slices = len(np.unique(slices_all))
    coords = np.stack(np.unravel_index(np.arange(mesh.devices.size), mesh.devices.shape), axis=1)  # [n, axes]
    names = tuple(mesh.axis_names)
    dcn_axes = tuple(names[a] for a in range(len(names)) if _varies(slices_all.reshape(mesh.devices.shape), a))
    local = slices_all == slices_all[0]
    coords, slices = coords[local], slices_all[local]  # the ids a per-slice program's groups use
    n = len(coords)
    out: dict[tuple, CollectiveStats] = {}
    mosaic = interpreted = 0
    for cname, body in comps.items():
        times = mult.get(cname, 0)
        if not times:
            continue
        shapes = {ins.name: ins.shape for ins in body}
        for ins in body:
            if ins.opcode == "custom-call" and re.search(_KERNEL_TARGETS, ins.rest):
                mosaic += times
            if ins.opcode == "while" and re.search(r'op_name="[^"]*(splash_mqa|pallas_call|mha_forward)', ins.rest):
                interpreted += times
            mega = _MEGASCALE.search(ins.rest) if ins.opcode == "send" else None
            if mega:  # a collective between slices, over the data-center network
                kind = _MEGASCALE_KINDS.get(mega.group(1), "collective-permute")
                size = _largest_array(ins.shape) * (n_slices if kind == "all-gather" else 1)
                stats = CollectiveStats(kind, dcn_axes, n_slices, True)
                stats = out.setdefault(stats.key(), stats)
                stats.count += times
                stats.bytes += times * size
                continue
            kind = next((k for k in COLLECTIVES if ins.opcode in (k, k + "-start")), None)
            if kind is None:
                continue
            operands = re.findall(r"%([\w.\-]+)", ins.rest.split(")", 1)[0])
            size = max([_largest_array(ins.shape)] + [array_bytes(shapes.get(o, "")) for o in operands])
            groups = replica_groups(ins.rest, n) or [list(range(n))]
            span = sorted({a for g in groups for a in range(len(names))
                           if len({int(coords[i, a]) for i in g if i < n}) > 1})
            stats = CollectiveStats(kind, tuple(names[a] for a in span), max(len(g) for g in groups),
                                    any(len({int(slices[i]) for i in g if i < n}) > 1 for g in groups))
            stats = out.setdefault(stats.key(), stats)
            stats.count += times
            stats.bytes += times * size
    return sorted(out.values(), key=lambda s: -s.bytes), {"kernel_calls": round(mosaic),
                                                           "interpreted_kernel_loops": round(interpreted),
                                                           "loops_without_trip_count": unknown_loops}
