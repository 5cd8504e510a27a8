"""Compile the paper's runs for TPU slices (python -m yarn_jax.aot, one process per row) and tabulate
the compiler's figures: results/aot/json/<row>.json -> results/aot/table.md, table.csv.

    python bench/aot_matrix.py            # every row not compiled yet (a row's JSON is its record)
    python bench/aot_matrix.py --table    # only rebuild the table
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "aot"
S16 = "configs/train/llama2_7b_yarn_s16.yaml"
S32 = "configs/train/llama2_7b_yarn_s32.yaml"
EVAL = "configs/eval/llama2_7b_yarn_long.yaml"
SEQ = lambda n: ["--mesh", "fsdp_sequence", "--mesh-axes", f"{{sequence: {n}}}"]  # noqa: E731

# name, config, topology, flags. The paper's global batch is 64 sequences of 64k tokens; accum sets the
# micro-batch (64 / accum sequences per forward), chosen so every fsdp group holds whole sequences.
ROWS = [
    ("7b_s16_v5p-32_seq4", S16, "v5p-32", SEQ(4)),
    ("7b_s16_v5p-32_seq2", S16, "v5p-32", SEQ(2)),
    ("7b_s16_v5p-32_fsdp", S16, "v5p-32", ["--mesh", "fsdp", "--mesh-axes", "{}", "--accum", "4"]),
    ("7b_s16_v5p-64_seq4", S16, "v5p-64", SEQ(4)),
    ("7b_s16_v5p-64_seq4_dots", S16, "v5p-64", SEQ(4) + ["--remat", "dots_no_batch"]),
    ("7b_s16_v5p-64_seq4_noremat", S16, "v5p-64", SEQ(4) + ["--remat", "none"]),
    ("7b_s16_v5p-64_seq8", S16, "v5p-64", SEQ(8)),
    ("7b_s16_v5p-128_seq8", S16, "v5p-128", SEQ(8)),
    ("7b_s16_v5p-128_seq8_x2slices", S16, "v5p-128", SEQ(8) + ["--num-slices", "2", "--accum", "4"]),
    ("7b_s16_v4-32_seq4", S16, "v4-32", SEQ(4)),
    ("7b_s16_v4-32_seq8", S16, "v4-32", SEQ(8) + ["--accum", "16"]),
    ("7b_s16_v5e-64_seq8", S16, "v5e-64", SEQ(8)),
    ("7b_s16_v5e-64_seq4", S16, "v5e-64", SEQ(4) + ["--accum", "4"]),
    ("7b_s16_v5e-128_seq8", S16, "v5e-128", SEQ(8) + ["--accum", "4"]),
    ("7b_s16_v5e-256_seq8", S16, "v5e-256", SEQ(8) + ["--accum", "2"]),
    ("7b_s32_v5p-64_seq4", S32, "v5p-64", SEQ(4) + ["--model-config", "llama-2-7b"]),
    ("7b_s32_128k_v5p-64_seq8", S32, "v5p-64", SEQ(8) + ["--model-config", "llama-2-7b", "--seq-len", "131072",
                                                        "--accum", "16"]),
    ("13b_s16_v5p-64_seq4", S16, "v5p-64", SEQ(4) + ["--model-config", "llama-2-13b"]),
    ("13b_s16_v5p-128_seq8", S16, "v5p-128", SEQ(8) + ["--model-config", "llama-2-13b"]),
    ("13b_s16_v4-32_seq8", S16, "v4-32", SEQ(8) + ["--model-config", "llama-2-13b", "--accum", "16"]),
    ("13b_s16_v5e-256_seq8", S16, "v5e-256", SEQ(8) + ["--model-config", "llama-2-13b", "--accum", "2"]),
    # MaxText PR #4687's setting: Llama-2-7B at 32k on v5p-128, context parallelism 16, 2M tokens per step
    ("7b_32k_v5p-128_seq16", S16, "v5p-128", SEQ(16) + ["--seq-len", "32768", "--batch-size", "64", "--accum", "16"]),
    ("7b_32k_v5p-128_seq16_dots", S16, "v5p-128", SEQ(16) + ["--seq-len", "32768", "--batch-size", "64",
                                                            "--accum", "16", "--remat", "dots"]),
    # context parallelism (the load-balanced layout and Ulysses, compiled after they landed): the same step
    # with each setting; the imbalance column is modeled (sharding/balance.py), the rest compiled
    ("cp_7b_64k_v5p-32_seq4_contiguous", S16, "v5p-32", SEQ(4) + ["--load-balance", "none"]),
    ("cp_7b_64k_v5p-32_seq4_dual_chunk", S16, "v5p-32", SEQ(4)),
    ("cp_7b_64k_v5p-64_seq8_contiguous", S16, "v5p-64", SEQ(8) + ["--load-balance", "none"]),
    ("cp_7b_64k_v5p-64_seq8_dual_chunk", S16, "v5p-64", SEQ(8)),
    ("cp_7b_64k_v5p-64_seq8_ulysses", S16, "v5p-64", SEQ(8) + ["--context-parallel", "ulysses"]),
    ("cp_7b_128k_v5p-64_seq8_dual_chunk", S32, "v5p-64", SEQ(8) + ["--model-config", "llama-2-7b", "--seq-len",
                                                                  "131072", "--accum", "16"]),
    ("cp_7b_128k_v5p-64_seq8_ulysses", S32, "v5p-64", SEQ(8) + ["--model-config", "llama-2-7b", "--seq-len",
                                                               "131072", "--accum", "16", "--context-parallel",
                                                               "ulysses"]),
    ("cp_7b_256k_v5p-128_seq16_dual_chunk", S32, "v5p-128", SEQ(16) + ["--model-config", "llama-2-7b", "--seq-len",
                                                                      "262144", "--accum", "16"]),
    ("cp_7b_256k_v5p-128_seq16_ulysses", S32, "v5p-128", SEQ(16) + ["--model-config", "llama-2-7b", "--seq-len",
                                                                   "262144", "--accum", "16", "--context-parallel",
                                                                   "ulysses"]),
    ("cp_7b_64k_v5p-64_seq8_ring", S16, "v5p-64", SEQ(8) + ["--context-parallel", "ring"]),
    ("cp_7b_64k_v5p-64_seq8_striped", S16, "v5p-64", SEQ(8) + ["--load-balance", "striped"]),
    ("cp_7b_128k_v5p-64_seq8_ring", S32, "v5p-64", SEQ(8) + ["--model-config", "llama-2-7b", "--seq-len",
                                                            "131072", "--accum", "16", "--context-parallel", "ring"]),
    # ring with `remat: attention`: each layer's attention output kept, the backward runs no second ring
    ("cp_7b_64k_v5p-64_seq8_ring_attention_remat", S16, "v5p-64",
     SEQ(8) + ["--context-parallel", "ring", "--remat", "attention"]),
    ("cp_7b_128k_v5p-64_seq8_ring_attention_remat", S32, "v5p-64",
     SEQ(8) + ["--model-config", "llama-2-7b", "--seq-len", "131072", "--accum", "16", "--context-parallel", "ring",
               "--remat", "attention"]),
    ("eval_7b_v5p-32_seq4", EVAL, "v5p-32", []),
    ("eval_7b_v5e-64_seq8", EVAL, "v5e-64", SEQ(8)),
    # one 8-GPU host, compiled through the jax CUDA plugin (needs jax[cuda12]; run this script with that venv)
    ("gpu_7b_s4_16k_h100-8_fsdp", S16, "h100-8", ["--mesh", "fsdp", "--mesh-axes", "{}", "--seq-len", "16384",
                                                  "--batch-size", "8", "--accum", "1",
                                                  "--rope", "{rope_type: yarn, factor: 4, original_max_position_embeddings: 4096}"]),
    ("gpu_eval_7b_h100-8_seq8", EVAL, "h100-8", SEQ(8)),
]


def run(rows) -> None:
    (OUT / "json").mkdir(parents=True, exist_ok=True)
    import importlib.util

    gpu = importlib.util.find_spec("jax_cuda12_plugin") is not None
    for name, config, topo, flags in rows:
        target = OUT / "json" / f"{name}.json"
        if target.exists() or topo.startswith("h100") != gpu:  # GPU rows in a jax[cuda12] venv, TPU rows without
            continue
        t0 = time.time()
        cmd = [sys.executable, "-m", "yarn_jax.aot", "--config", config, "--topology", topo, "--out", str(target),
               *flags]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {proc.returncode} in {time.time() - t0:.0f} s", flush=True)
        print(proc.stdout.strip(), flush=True)
        if proc.returncode not in (0, 1) or not target.exists():
            print(proc.stderr.strip()[-2000:], flush=True)
            continue
        record = json.loads(target.read_text())  # the command that produced it, for the table
        record["command"] = " ".join(["python -m yarn_jax.aot", "--config", config, "--topology", topo,
                                      *[f"'{f}'" if " " in f else f for f in flags]])
        target.write_text(json.dumps(record, indent=2))


def _axes(mesh: dict) -> str:
    return " x ".join(f"{a} {n}" for a, n in mesh.items() if n > 1) or "one chip"


def table() -> None:
    GiB = 1024 ** 3
    rows = []
    for name, *_ in ROWS:
        path = OUT / "json" / f"{name}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        for p in rec["programs"]:
            m, mo = p["memory"], p.get("modeled", {})
            coll = sum(c["bytes_per_step_per_chip"] for c in p.get("collectives", []))
            rows.append({
                "row": name, "model": rec["model_config"].split(" (")[0].removeprefix("preset "),
                "program": p["program"], "rope": (rec["settings"].get("rope") or {}).get("factor", "-"),
                "topology": rec["topology"] + (f" x{rec['num_slices']}" if rec["num_slices"] > 1 else ""),
                "mesh": _axes(p["mesh"]), "remat": rec["settings"].get("remat", "-"),
                "hbm_gib": round(m["total_bytes"] / GiB, 2) if m.get("total_bytes") else None,
                "capacity_gib": round(m["chip_hbm_bytes"] / GiB, 2), "fits": m["fits"],
                "tflops_per_chip": round(p["analytic"]["hardware_flops_per_chip"] / 1e12, 1) if "analytic" in p else None,
                "step_s": round(mo["step_s"], 2) if mo else None, "mfu": round(100 * mo["mfu"], 1) if mo else None,
                "attention_imbalance": round(mo["attention_imbalance"], 3) if mo else None,
                "collective_gib": round(coll / GiB, 1) if "collectives" in p else None,
                "mosaic": p.get("kernels", {}).get("kernel_calls"),
                "compile_s": round(p["compile_s"] + p["lower_s"], 1)})
    if not rows:
        return
    with (OUT / "table.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = ("| row | model | program | s | topology | mesh | remat | HBM/chip GiB (of) | fits | HW TFLOP/chip "
            "| modeled attention max/mean | modeled step s | modeled MFU % | collectives GiB/chip/step | kernel calls "
            "| compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        hbm = "-" if r["hbm_gib"] is None else f"{r['hbm_gib']}"
        lines.append(f"| {r['row']} | {r['model']} | {r['program']} | {r['rope']} | {r['topology']} | {r['mesh']} "
                     f"| {r['remat']} | {hbm} ({r['capacity_gib']}) | {'yes' if r['fits'] else '**no**'} "
                     f"| {r['tflops_per_chip'] or '-'} | {r['attention_imbalance'] or '-'} | {r['step_s'] or '-'} "
                     f"| {r['mfu'] or '-'} "
                     f"| {r['collective_gib'] if r['collective_gib'] is not None else '-'} | {r['mosaic'] or '-'} "
                     f"| {r['compile_s']} |")
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="only rebuild the table")
    ap.add_argument("--only", nargs="*", help="row names")
    args = ap.parse_args()
    if not args.table:
        run([r for r in ROWS if not args.only or r[0] in args.only])
    table()
