"""yarn-jax aot --config CONFIG.yaml --topology v5p-32 [--num-slices N] [--job train|eval]
                         [--model-config PRESET|config.json] [--out FILE.json] [train/eval flags ...]

Compiles the program train.py (the full step: forward, backward, clipping, AdamW, donation) or eval.py
(the perplexity scorer, at each of --lengths) would run, for a TPU slice (or an H100 host), with the
config's mesh, rules, dtypes, remat and attention backend (splash compiled with Mosaic) — on this
machine, with no TPU — and
prints the per-chip HBM verdict, FLOPs, collectives per step, modeled step time / MFU and compile time;
the same as JSON in --out. Exit code 0 when every program fits, 1 when one does not fit a chip's HBM,
2 for a bad setting. Needs libtpu (the `tpu` extra: pip install -e ".[tpu]"), never a TPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import jax
import yaml

from yarn_jax import cli_config
from yarn_jax.aot.models import model_config
from yarn_jax.aot.programs import eval_program, target_sharder, train_program
from yarn_jax.aot.report import compile_report
from yarn_jax.aot.topology import topology
from yarn_jax.errors import CommandHelp, ConfigError, command
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.rundir import write_json_atomic
from yarn_jax.training.config import TrainConfig

# what libtpu prints on a machine without a TPU: harmless, and not ours to show
_NOISE = ("Failed to find host bounds", "Logging before InitGoogle", "E0000 ", "=== Source Location Trace",
          "learning/45eac", "could not determine TPU")


@contextlib.contextmanager
def quiet_libtpu():
    """Hide libtpu's native no-TPU-here warnings (written straight to file descriptor 2); other lines —
    the compiler's own warnings, e.g. an involuntary full rematerialization — pass, and are collected in
    the yielded list for the report."""
    sys.stderr.flush()
    saved = os.dup(2)
    kept: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield kept
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            for line in buf.read().decode(errors="replace").splitlines():
                if line.strip() and not any(n in line for n in _NOISE):
                    kept.append(line)
                    print(line, file=sys.stderr)


def _job_config(job: str, path: str | None, rest: list[str]):
    if job == "auto":
        if path is None:
            raise ConfigError("--job: pass --job train or --job eval when no --config is given")
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else {}
        keys = set(data or {}) if isinstance(data, dict) else set()
        job = "train" if keys & {"seq_len", "steps", "batch_size", "learning_rate"} else "eval"
    cls = TrainConfig if job == "train" else EvalConfig
    parser = cli_config.CommandParser(prog=f"yarn-jax aot ... ({job} settings)")
    cli_config.add_config_flags(parser, cls)
    args = parser.parse_args(rest)
    return job, cli_config.load_config(cls, path, cli_config.overrides_from_args(args, cls), where=f"{job} config")


def _summary(r: dict) -> list[str]:
    GiB = 1024 ** 3
    lines = [f"{r['program']} on {r['topology']} ({r['chips']} chips, mesh "
             + (" x ".join(f"{a}={n}" for a, n in r["mesh"].items() if n > 1) or "one chip") + f"): {r['verdict']}"]
    m = r["memory"]
    if "argument_bytes" in m:
        lines.append(f"  HBM per chip: arguments {m['argument_bytes'] / GiB:.2f} GiB, outputs "
                     f"{m['output_bytes'] / GiB:.2f}, temporaries {m['temp_bytes'] / GiB:.2f}, aliased "
                     f"{m['alias_bytes'] / GiB:.2f}, total {m['total_bytes'] / GiB:.2f} of "
                     f"{m['chip_hbm_bytes'] / GiB:.2f} GiB")
    lines.append(f"  compile {r['compile_s']:.1f} s (lowering {r['lower_s']:.1f} s)")
    if "analytic" not in r:
        return lines
    a, mo, k = r["analytic"], r["modeled"], r["kernels"]
    lines.append(f"  FLOPs per chip: model {a['model_flops_per_chip'] / 1e12:.1f} T, hardware (with remat) "
                 f"{a['hardware_flops_per_chip'] / 1e12:.1f} T (analytic); compiler cost analysis "
                 f"{r['compiler_cost']['flops_per_chip'] / 1e12:.2f} T (loop bodies once)")
    lines.append(f"  compiled kernel calls per step (Mosaic / Triton) {k['kernel_calls']}, interpreted kernel "
                 f"loops {k['interpreted_kernel_loops']}")
    for c in r["collectives"][:8]:
        lines.append(f"  {c['kind']:<18} over {'+'.join(c['axes']) or '-':<16} group {c['group_size']:>3}"
                     f"{' DCN' if c['crosses_slices'] else '    '} x{c['count_per_step']:>5}/step "
                     f"{c['bytes_per_step_per_chip'] / GiB:8.2f} GiB/chip")
    mfu = f"{mo['mfu'] * 100:.1f} %" if mo["mfu"] is not None else "-"
    lines.append(f"  modeled (not measured): step {mo['step_s']:.2f} s ({mo['bound']}-bound: compute "
                 f"{mo['compute_s']:.2f} s, ICI {mo['ici_s']:.2f} s, DCN {mo['dcn_s']:.2f} s), MFU {mfu}")
    return lines


@command
def main(argv: list[str] | None = None) -> int:
    jax.config.update("jax_platforms", "cpu")  # compile for the target; never initialise a local TPU
    ap = cli_config.CommandParser(prog="yarn-jax aot", description=__doc__,
                                 formatter_class=CommandHelp)
    ap.add_argument("--config", help="train or eval YAML (configs/train/*.yaml, configs/eval/*.yaml) (default: "
                    "none: the job's default settings, --job needed)")
    ap.add_argument("--topology", required=True, help="TPU slice type: v4-8 ... v4-1024, v5e-4 ... v5e-256, "
                    "v5p-8 ... v5p-1024, v6e-4 ... v6e-256; or an H100 host: h100-1 ... h100-8 (needs jax[cuda12]) "
                    "(required, no default)")
    ap.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN (multi-slice)")
    ap.add_argument("--job", choices=["auto", "train", "eval"], default="auto",
                    help="the program: train step or eval scorer (auto: from the config's fields)")
    ap.add_argument("--model-config", help="preset (llama-2-7b, llama-2-13b, smollm2-135m) or config.json; "
                    "default: the config's model (its config if present here, else the preset its name matches)")
    ap.add_argument("--out", help="JSON report (default: runs/aot/<job>_<topology>[_xN]_<config>.json)")
    args, rest = ap.parse_known_args(argv)
    if args.num_slices < 1:
        raise ConfigError(f"--num-slices must be >= 1, got {args.num_slices}")
    job, cfg = _job_config(args.job, args.config, rest)
    topo = topology(args.topology)
    model, source = model_config(args.model_config, cfg.model)
    rope = cfg.rope if job == "train" else None
    if rope is not None:
        model = model.with_rope(rope, where="rope")
    out = Path(args.out or f"runs/aot/{job}_{topo.name}" + (f"_x{args.num_slices}" if args.num_slices > 1 else "")
               + f"_{Path(args.config).stem if args.config else 'flags'}.json")
    if out.exists():
        try:
            ours = "yarn_jax_aot" in json.loads(out.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            ours = False
        if not ours:
            raise ConfigError(f"--out {out} exists and is not a yarn_jax.aot report; choose another path")
    with quiet_libtpu():
        devices = topo.devices(args.num_slices)
    sharder = target_sharder(cfg, devices)
    programs = ([train_program(model, cfg, sharder)] if job == "train" else
                [eval_program(model, cfg, sharder, n) for n in cfg.lengths])
    reports = []
    for program in programs:
        print(f"compiling {program.name} for {topo.name}" + (f" x {args.num_slices} slices" if args.num_slices > 1
                                                             else "") + " ...", file=sys.stderr, flush=True)
        with quiet_libtpu() as warnings:
            r = compile_report(program, model, sharder, topo, remat=getattr(cfg, "remat", "none"))
        r.update(topology=topo.name, num_slices=args.num_slices, compiler_warnings=warnings)
        reports.append(r)
        print("\n".join(_summary(r)), flush=True)
    result = {"yarn_jax_aot": 1, "job": job, "config": args.config, "topology": topo.name,
              "num_slices": args.num_slices, "model_config": source, "chip": topo.chip.__dict__,
              "settings": cfg.model_dump(mode="json"), "programs": reports}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"report: {out}", file=sys.stderr)
    return 0 if all(r["memory"]["fits"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
