"""Compile a program for a target topology and say what the compiler says: per-chip HBM (with a FITS /
OOM verdict — an out-of-memory compile is an answer, not a crash), FLOPs, the collectives per step,
Mosaic kernels, compile time; beside them the analytic FLOPs and the modeled step time / MFU."""

from __future__ import annotations

import re
import time

from yarn_jax.aot import hlo, roofline
from yarn_jax.aot.programs import Program
from yarn_jax.aot.topology import GiB, Topology
from yarn_jax.config import LlamaConfig
from yarn_jax.sharding.balance import attention_imbalance
from yarn_jax.sharding.rules import Sharder
from yarn_jax.progress import working

_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = r"([\d.]+)([KMGT])"
# XLA:TPU's two spellings: "Used 41.2G of 15.7G hbm" (the whole program) and "the total memory required
# for HLO temporaries (163.90G) exceeds available HBM (95.74G)" (one part, counted until it overflowed)
_OOM_USED = re.compile(rf"Used {_SIZE} of {_SIZE} hbm")
_OOM_PART = re.compile(rf"required for ([\w ]+?) \({_SIZE}\) exceeds available HBM \({_SIZE}\)")


def _oom_numbers(message: str) -> dict | None:
    """{used_bytes, capacity_bytes, what} from XLA:TPU's out-of-memory message; None if it is not one."""
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
        return None
    m = _OOM_USED.search(message)
    if m:
        return {"used_bytes": float(m.group(1)) * _UNITS[m.group(2)], "what": "program",
                "capacity_bytes": float(m.group(3)) * _UNITS[m.group(4)]}
    m = _OOM_PART.search(message)
    if m:
        return {"used_bytes": float(m.group(2)) * _UNITS[m.group(3)], "what": m.group(1),
                "capacity_bytes": float(m.group(4)) * _UNITS[m.group(5)]}
    return {"used_bytes": None, "capacity_bytes": None, "what": None}


def compile_report(program: Program, cfg: LlamaConfig, sharder: Sharder, topo: Topology, *, remat: str = "none",
                   keep_hlo: bool = False) -> dict:
    """Lower and compile `program` on the sharder's mesh; the per-chip figures as a JSON-ready dict."""
    mesh = sharder.mesh
    chips = mesh.devices.size
    chip = topo.chip
    out: dict = {"program": program.name, "chips": chips, "mesh": dict(mesh.shape),
                 "replicated_where_not_divisible": dict(sharder.fallbacks)}
    t0 = time.perf_counter()
    with working(f"lower {program.name} for {topo.name}"):
        lowered = program.jitted.lower(*program.args)
    out["lower_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        with working(f"compile {program.name} for {topo.name} ({chips} chips)"):
            compiled = lowered.compile()
    except Exception as e:  # XLA reports an over-budget program as a compile error: that is the verdict
        oom = _oom_numbers(str(e))
        if oom is None:
            raise
        out["compile_s"] = time.perf_counter() - t0
        used, cap = oom["used_bytes"], oom["capacity_bytes"] or chip.hbm_bytes
        part = oom["what"] not in (None, "program")  # the compiler stopped counting at that part
        out["memory"] = {"total_bytes": used, "capacity_bytes": cap, "chip_hbm_bytes": chip.hbm_bytes,
                         "fits": False, "over_by_bytes": None if used is None else used - cap,
                         "at_least": part, "counted": oom["what"]}
        out["verdict"] = "OOM" + ("" if used is None else f" by {'at least ' if part else ''}"
                                  f"{(used - cap) / GiB:.2f} GiB ({'' if not part else oom['what'] + ' alone: '}"
                                  f"{used / GiB:.2f} GiB needed, {cap / GiB:.2f} GiB usable per chip)")
        out["compiler_message"] = " ".join(str(e).split())[:600]
        return out
    out["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes + mem.generated_code_size_in_bytes)
    out["memory"] = {"argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
                     "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
                     "code_bytes": mem.generated_code_size_in_bytes, "total_bytes": total,
                     "chip_hbm_bytes": chip.hbm_bytes, "fits": total <= chip.hbm_bytes,
                     "over_by_bytes": max(0.0, total - chip.hbm_bytes)}
    out["verdict"] = (f"FITS: {total / GiB:.2f} of {chip.hbm_bytes / GiB:.2f} GiB per chip" if total <= chip.hbm_bytes
                      else f"OOM by {(total - chip.hbm_bytes) / GiB:.2f} GiB: the compiled program's memory analysis "
                           f"totals {total / GiB:.2f} of {chip.hbm_bytes / GiB:.2f} GiB per chip (XLA compiled it "
                           "without refusing)")
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # XLA:GPU's AOT path gives none
    out["compiler_cost"] = {"flops_per_chip": float(cost.get("flops", 0.0)),
                            "bytes_accessed_per_chip": float(cost.get("bytes accessed", 0.0)),
                            "note": "XLA's cost analysis counts each loop body once (the scanned layers, the "
                                    "chunked head): a lower bound, not the step's FLOPs"}
    text = compiled.as_text()
    stats, totals = hlo.collectives(text, mesh)
    out["kernels"] = totals
    out["collectives"] = [{"kind": s.kind, "axes": list(s.axes), "group_size": s.group_size,
                           "crosses_slices": s.crosses_slices, "count_per_step": round(s.count),
                           "bytes_per_step_per_chip": s.bytes} for s in stats]
    f = roofline.flops(cfg, program.seq_len, program.sequences, train=program.train, remat=remat,
                       attention_kept=program.attention_kept)
    out["analytic"] = {**f, "model_flops_per_chip": f["model_flops"] / chips,
                       "hardware_flops_per_chip": f["hardware_flops"] / chips}
    imbalance = attention_imbalance(program.seq_len, sharder.sequence_shards(program.seq_len), sharder.load_balance,
                                    sharder.context_parallel)
    out["modeled"] = roofline.model_step(f, stats, chip, chips, imbalance)
    if keep_hlo:
        out["hlo_text"] = text
    return out
