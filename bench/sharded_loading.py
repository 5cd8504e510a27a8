"""Peak host memory of loading SmolLM2-135M (float32 HF safetensors, 538 MB of parameters) onto devices:

  unsharded     load_checkpoint + model_from_params on one device (the single-device path)
  fsdp8         from_pretrained(sharder=...) on 8 virtual CPU devices, mesh fsdp=8 (each device gets 1/8 of every matrix)
  fsdp8_2proc   the same mesh over 2 processes x 4 devices (jax.distributed over gloo on 127.0.0.1):
                peak RSS per process — each process reads and holds only its half

Virtual CPU devices share the host's memory, so on one process the shards of all 8 devices add up to one
copy of the model; what sharded loading removes is the full host copy next to the device copy (and the
stacked-layer temporaries). Each measurement runs in a fresh subprocess (peak RSS = ru_maxrss of that
process, minus the same process's RSS right after jax started its devices); modes alternate and repeat;
the table quotes medians.

    python bench/sharded_loading.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import report  # noqa: E402
MODES = ("unsharded", "fsdp8", "fsdp8_2proc")


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def child(mode: str, port: int | None, pid: int | None) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", 4 if mode == "fsdp8_2proc" else (8 if mode == "fsdp8" else 1))
    sys.path.insert(0, str(HERE.parent))
    from yarn_jax import assets
    from yarn_jax.sharding import MeshConfig, Sharder, distributed, make_mesh

    if mode == "fsdp8_2proc":
        distributed.initialize(distributed.DistributedConfig(coordinator_address=f"127.0.0.1:{port}",
                                                             num_processes=2, process_id=pid))
    jax.devices()
    path = assets.smollm2()
    baseline = _rss_gb()
    t0 = time.perf_counter()
    if mode == "unsharded":
        from yarn_jax.checkpoint import load_checkpoint
        from yarn_jax.model import model_from_params, model_params

        cfg, params = load_checkpoint(path)
        model = model_from_params(cfg, params)
        del params
    else:
        from yarn_jax.api import from_pretrained
        from yarn_jax.model import model_params

        model = from_pretrained(path, sharder=Sharder(make_mesh(MeshConfig(preset="fsdp")))).module
    values = list(model_params(model).values())
    jax.block_until_ready(values)
    seconds = time.perf_counter() - t0
    local = sum(s.data.nbytes for v in values for s in v.addressable_shards) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"peak_gb": peak, "baseline_gb": baseline, "load_s": seconds,
                      "device_bytes_gb": local, "process": jax.process_index()}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if mode != "fsdp8_2proc":
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    port = _free_port()
    procs = [subprocess.Popen(cmd + ["--port", str(port), "--pid", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise SystemExit(err[-3000:])
    recs = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    return max(recs, key=lambda r: r["peak_gb"])  # the larger of the two processes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "sharded_loading.json"))
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--port", type=int)
    ap.add_argument("--pid", type=int)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.port, args.pid)
    from yarn_jax import assets

    assets.smollm2()  # fetched once, outside the measurements
    runs: dict[str, list] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:
            runs[mode].append(measure(mode))
            print(f"repeat {r + 1} {mode}: {runs[mode][-1]}", file=sys.stderr)
            Path(args.out).write_text(json.dumps({"runs": runs}, indent=2))
    rows = []
    for mode in MODES:
        med = {k: statistics.median(x[k] for x in runs[mode]) for k in ("peak_gb", "baseline_gb", "load_s",
                                                                          "device_bytes_gb")}
        rows.append({"mode": mode, **med, "added_gb": med["peak_gb"] - med["baseline_gb"]})
    report(args.out, runs, rows, [("mode", "{mode}"), ("peak RSS (GB)", "{peak_gb:.2f}"),
                                  ("after jax start (GB)", "{baseline_gb:.2f}"),
                                  ("added by loading (GB)", "{added_gb:.2f}"),
                                  ("parameters held (GB)", "{device_bytes_gb:.2f}"), ("load s", "{load_s:.1f}")])

if __name__ == "__main__":
    main()
