"""Splash attention block sizes on the real TPU compiler (no TPU): which settings compile, the per-chip
temporaries, and XLA's cost analysis of the step (the Mosaic kernels' own cost estimates included) —
for head_dim 64 (SmolLM2, 8k tokens) and 128 (Llama-2, 32k tokens) on one v5p chip. Writes
bench/results/aot_splash_blocks.json. Throughput needs a TPU: these figures choose among settings that
compile and fit, not among speeds.

    python bench/aot_splash_blocks.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")

from yarn_jax.aot.models import PRESETS  # noqa: E402
from yarn_jax.aot.programs import target_sharder, train_program  # noqa: E402
from yarn_jax.aot.report import compile_report  # noqa: E402
from yarn_jax.aot.topology import topology  # noqa: E402
from yarn_jax.config import LlamaConfig  # noqa: E402
from yarn_jax.training.config import TrainConfig  # noqa: E402

CANDIDATES = {
    "128 (jax's default)": dict(zip(("block_q", "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv",
                                     "block_kv_dkv_compute", "block_q_dq", "block_kv_dq"), [128] * 8),
                               fused_bwd=False),
    "512 fused": {},
    "512 unfused": {"fused_bwd": False},
    "1024 fused": {k: 1024 for k in ("block_q", "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv",
                                     "block_kv_dkv_compute")},
}


def main():
    out = []
    shapes = {64: dict(PRESETS["smollm2-135m"], num_hidden_layers=2),
              128: dict(PRESETS["llama-2-7b"], num_hidden_layers=2)}
    for head_dim, hf in shapes.items():
        cfg = LlamaConfig.from_hf_dict(hf)
        for topo_name in ("v5p-8",):
            topo = topology(topo_name)
            for length in {64: (8192,), 128: (32768,)}[head_dim]:
                for name, blocks in CANDIDATES.items():
                    tcfg = TrainConfig(seq_len=length, batch_size=1, dtype="bfloat16", remat="full",
                                       attention_backend="splash", splash_blocks=blocks)
                    sharder = target_sharder(tcfg, topo.devices())
                    t0 = time.time()
                    try:
                        r = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, topo, remat="full")
                        row = {"fits": r["memory"]["fits"], "temp_gib": r["memory"].get("temp_bytes", 0) / 2 ** 30,
                               "compiler_flops": r.get("compiler_cost", {}).get("flops_per_chip"),
                               "compiler_bytes": r.get("compiler_cost", {}).get("bytes_accessed_per_chip"),
                               "verdict": r["verdict"]}
                    except Exception as e:  # a setting Mosaic refuses: record why
                        row = {"error": " ".join(str(e).split())[:300]}
                    row.update(head_dim=head_dim, topology=topo_name, length=length, blocks=name,
                               seconds=round(time.time() - t0, 1))
                    print(json.dumps(row), flush=True)
                    out.append(row)
    path = Path(__file__).parent / "results" / "aot_splash_blocks.json"
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
