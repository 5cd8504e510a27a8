"""Run a sweep: set up the base model, run every cell (fine-tune if it asks, then evaluate), gather.

Directory layout under `out`:
    setup/            corpus split, tokenizer, random init, pretraining run (scratch sweeps only)
    cells/<id>/       train/ (a train.py run directory), eval/ (an eval.py run directory), result.json
    table.md, table.csv, cells.csv, ppl_vs_length.png, nll_vs_position.png, train_loss.png, commands.txt

A cell's result.json is written (atomically) when the cell is finished; a re-run skips those cells, and
the train/eval directories inside an unfinished cell resume where they stopped. Cells can also run as
separate processes (`--cell ID`, e.g. one per TPU VM or job-array task), then `--gather` builds the tables.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import shlex
from pathlib import Path
from typing import Any


from rich.console import Console

from yarn_jax.assets import resolve_model
from yarn_jax.checkpoint import read_config
from yarn_jax.cli_config import load_config
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import ConfigError
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.evaluation.methods import parse_method
from yarn_jax.evaluation.runner import run as run_eval
from yarn_jax.evaluation.runner import task_metrics
from yarn_jax.outputs import lock
from yarn_jax.rundir import write_csv_atomic, write_json_atomic
from yarn_jax.sweep import report, scratch
from yarn_jax.sweep.config import SweepConfig
from yarn_jax.training.config import TrainConfig
from yarn_jax.training.loop import train
from yarn_jax.progress import console as log_console


@dataclasses.dataclass(frozen=True)
class Cell:
    method: str
    scale: float
    finetune_steps: int
    seed: int
    train: tuple[tuple[str, Any], ...]  # TrainConfig overrides of this cell (grid `train` + `vary` values)
    vary: tuple[tuple[str, Any], ...]  # the varied ones (part of the id)
    rope: tuple[tuple[str, Any], ...] = ()  # varied rope parameters, added to the named method

    @property
    def method_spec(self) -> str:
        """The method as evaluation.methods reads it: `yarn`, or `yarn:temperature=0.07` with varied
        rope parameters."""
        return self.method + (":" + ",".join(f"{k}={v}" for k, v in self.rope) if self.rope else "")

    @property
    def id(self) -> str:
        name = self.method if self.method in ("none", "default") or self.scale == 1 else f"{self.method}-s{self.scale:g}"
        if self.finetune_steps:
            name += f"-ft{self.finetune_steps}-seed{self.seed}"
        for k, v in self.vary:
            name += f"-{k}={v}"
        return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)

    @property
    def group(self) -> str:
        """The cell's id without its seed: the unit whose seeds are aggregated."""
        return self.id.replace(f"-seed{self.seed}", "") if self.finetune_steps else self.id

    def describe(self) -> dict:
        return {"id": self.id, "method": self.method, "scale": self.scale, "finetune_steps": self.finetune_steps,
                "seed": self.seed, **dict(self.vary)}


def expand(cfg: SweepConfig) -> list[Cell]:
    """Every grid's cells in order, duplicates (same id) dropped; `none` at one scale only, seeds only with
    fine-tuning."""
    cells: dict[str, Cell] = {}
    for g in cfg.grids:
        keys, rope_keys = sorted(g.vary), g.rope_keys()
        for method, scale, steps, seed, *values in itertools.product(
                g.methods, g.scales, g.finetune_steps, g.seeds, *(g.vary[k] for k in keys)):
            if method in ("none", "default"):
                scale = 1.0
            if not steps:
                seed = 0
            vary = tuple(zip(keys, values))
            train = {**g.train, **{k: v for k, v in vary if k not in rope_keys}}
            cell = Cell(method, float(scale), int(steps), int(seed), tuple(sorted(train.items())), vary,
                        tuple((k, v) for k, v in vary if k in rope_keys))
            cells.setdefault(cell.id, cell)
    return list(cells.values())


class Sweep:
    def __init__(self, cfg: SweepConfig, console: Console | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.console = console or log_console()
        self.cells = expand(cfg)
        self._setup_done = False

    # --- base model ---------------------------------------------------------------------------------
    def plan(self) -> tuple[str, int, str]:
        """(base model path, L0, evaluation data) without building anything: for a scratch sweep the paths
        its setup will fill."""
        if self.cfg.scratch:
            setup = self.out / "setup"
            return (str(setup / "pretrain" / "checkpoints"), int(self.cfg.scratch.model["max_position_embeddings"]),
                    str(setup / "corpus" / "heldout"))
        path = resolve_model(self.cfg.model)
        l0 = self.cfg.original_context
        if l0 is None:
            config_json = Path(path) / "config.json"
            if not config_json.exists():
                raise ConfigError(f"original_context: required for model {self.cfg.model!r} (no config.json to "
                                  "read L0 from)")
            mc = LlamaConfig.from_json_file(config_json)
            l0 = mc.rope.original_max_position_embeddings or mc.max_position_embeddings
        return path, int(l0), self.cfg.data

    def base(self) -> tuple[str, int, str]:
        """`plan()`, after setting up the scratch model (split, tokenizer, init, pretraining) if needed."""
        if self.cfg.scratch and not self._setup_done:
            self._setup_scratch()
            self._setup_done = True
        return self.plan()

    def _pretrain_config(self, init_dir: Path, train_dir: Path) -> TrainConfig:
        sc = self.cfg.scratch
        return load_config(TrainConfig, None, {"seq_len": int(sc.model["max_position_embeddings"]), **sc.pretrain,
                                               "model": str(init_dir), "rope": None, "data": str(train_dir),
                                               "out": str(self.out / "setup" / "pretrain")},
                           where="scratch.pretrain")

    def _setup_scratch(self) -> None:
        sc = self.cfg.scratch
        setup = self.out / "setup"
        done = setup / "pretrain" / "done.json"
        if done.exists():
            return
        train_dir, heldout_dir = scratch.split_corpus(self.cfg.data, setup / "corpus", sc.heldout)
        tok_dir = scratch.train_tokenizer(train_dir, setup / "tokenizer", sc.vocab_size)
        init_dir = scratch.init_model(setup / "init", sc.model, tok_dir, sc.init_seed)
        pre = self._pretrain_config(init_dir, train_dir)
        self.console.print(f"[bold]pretraining[/] the scratch model ({pre.steps} steps x {pre.batch_size} x "
                           f"{pre.seq_len} tokens) in {setup / 'pretrain'}")
        write_json_atomic(done, train(pre))

    # --- cells --------------------------------------------------------------------------------------
    def cell_dir(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.id

    def is_done(self, cell: Cell) -> bool:
        return (self.cell_dir(cell) / "result.json").exists()

    def cell_configs(self, cell: Cell):
        """(TrainConfig or None, EvalConfig) of a cell; validates every field before anything runs."""
        base, l0, eval_data = self.plan()
        d = self.cell_dir(cell)
        method = parse_method(cell.method_spec, cell.scale, l0)
        if method.rope is not None:  # the rope too, before any cell runs
            self.model_config.with_rope(method.rope, where=f"cell {cell.id}: method {cell.method!r}")
        tc = None
        if cell.finetune_steps:
            fields = {**self.cfg.train, **dict(cell.train)}
            if "seq_len" not in fields:
                fields["seq_len"] = int(round(max(cell.scale, 1.0) * l0))
            if self.cfg.scratch and "data" not in fields:
                fields["data"] = str(Path(eval_data).parent / "train")
            tc = load_config(TrainConfig, None, {**fields, "model": base, "rope": method.rope,
                                                 "steps": cell.finetune_steps, "seed": cell.seed,
                                                 "out": str(d / "train")}, where=f"cell {cell.id}: train")
        ec = load_config(EvalConfig, None, {
            **{"data": eval_data}, **self.cfg.eval,
            "model": str(d / "train" / "checkpoints") if tc else base,
            "methods": ["none"] if tc else [cell.method_spec], "scales": [max(cell.scale, 1.0)],
            "original_context": l0, "out": str(d / "eval")}, where=f"cell {cell.id}: eval")
        return tc, ec

    @functools.cached_property
    def model_config(self) -> LlamaConfig:
        """The base model's configuration, read without its weights (a scratch sweep's from scratch.model,
        before the model exists)."""
        if self.cfg.scratch:
            arch = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **self.cfg.scratch.model,
                    "vocab_size": self.cfg.scratch.vocab_size}
            return LlamaConfig.from_hf_dict(arch, where="scratch.model")
        return read_config(self.plan()[0])

    def run_cell(self, cell: Cell) -> dict:
        d = self.cell_dir(cell)
        if self.is_done(cell):
            return json.loads((d / "result.json").read_text())
        tc, ec = self.cell_configs(cell)
        # one runner per cell (e.g. two job-array tasks given the same id)
        with lock(d, f"sweep cell {cell.id}", run_dir=True):
            if self.is_done(cell):
                return json.loads((d / "result.json").read_text())
            self.console.rule(f"cell {cell.id}")
            record: dict = {}
            if tc is not None:
                record = train(tc)
            summary = run_eval(ec, console=self.console)
            result = {**cell.describe(), "group": cell.group, "train_final": record,
                      "perplexity": {str(r["length"]): r["ppl"] for r in summary["perplexity"]},
                      "tokens": {str(r["length"]): r.get("tokens") for r in summary["perplexity"]},
                      "metrics": task_metrics(summary)}  # every task's columns (ppl@L, passkey@L, ...)
            write_json_atomic(d / "result.json", result)
        return result

    def run(self, only: list[str] | None = None) -> None:
        cells = self.select(only)
        if self.cfg.scratch:  # the pretraining configuration too, before anything runs
            self._pretrain_config(Path("init"), Path("train"))
        for cell in cells:  # every cell's configuration checked before the first one runs
            self.cell_configs(cell)
        self.base()
        todo = [c for c in cells if not self.is_done(c)]
        self.console.print(f"[bold]{self.cfg.name}[/]: {len(cells)} cells, {len(cells) - len(todo)} already "
                           f"finished, results in {self.out}")
        for i, cell in enumerate(todo, 1):
            self.console.print(f"[bold]cell {i}/{len(todo)}[/] {cell.id}")
            self.run_cell(cell)

    def select(self, only: list[str] | None) -> list[Cell]:
        if not only:
            return self.cells
        known = {c.id: c for c in self.cells}
        missing = [x for x in only if x not in known]
        if missing:
            raise ConfigError(f"--cell: unknown cell id(s) {missing}; this sweep has {sorted(known)}")
        return [known[x] for x in only]

    def commands(self, config_path: str, sets: list[str]) -> list[str]:
        """One shell command per unit of work: the setup first, then every cell (independent of each other),
        then the gather step."""
        base = ["python", "-m", "yarn_jax.sweep", config_path] + [a for s in sets for a in ("--set", s)]
        q = lambda args: " ".join(shlex.quote(a) for a in args)  # noqa: E731
        lines = [q(base + ["--setup-only"])] if self.cfg.scratch else []
        lines += [q(base + ["--cell", c.id]) for c in self.cells]
        lines.append(q(base + ["--gather"]))
        return lines

    def gather(self) -> dict:
        """table.md / table.csv (seed-aggregated), cells.csv, the plots; unfinished cells are listed."""
        results, missing = report.load_results(self.out / "cells", [c.id for c in self.cells])
        self.out.mkdir(parents=True, exist_ok=True)
        l0 = self._l0_hint()
        blocks = {r["id"]: report.cell_blocks(self.out / "cells", r) for r in results}
        rows, lengths, vary_keys = report.summarize(results, blocks)
        write_csv_atomic(self.out / "cells.csv", [{k: v for k, v in r.items() if k not in ("perplexity", "tokens",
                                                   "train_final", "metrics")} | _metric_columns(r, lengths)
                                                   for r in results])
        write_csv_atomic(self.out / "table.csv", rows)
        md = f"# {self.cfg.name}\n\n" + report.markdown_table(rows, lengths, vary_keys, l0)
        if missing:
            md += f"\nNot finished yet: {', '.join(missing)}\n"
        (self.out / "table.md").write_text(md)
        plots = []
        if rows:
            plots.append(report.plot_ppl(rows, lengths, self.out / "ppl_vs_length.png",
                                         f"{self.cfg.name}: held-out perplexity", l0))
        nll_plot = report.plot_nll_by_position(results, self.out / "cells", self.out / "nll_vs_position.png",
                                               f"{self.cfg.name}: NLL by position at the longest length", l0)
        if nll_plot:
            plots.append(nll_plot)
        loss_plot = report.plot_train_loss(results, self.out / "cells", self.out / "train_loss.png",
                                           f"{self.cfg.name}: fine-tuning loss")
        if loss_plot:
            plots.append(loss_plot)
        self.console.print(md)
        for p in plots:
            self.console.print(f"plot: {p}")
        return {"rows": rows, "missing": missing, "plots": [str(p) for p in plots]}

    def _l0_hint(self) -> int | None:
        """L0 for the table headers and plot markers: the scratch model's, the configured one, or the one the
        finished cells' evaluations used (read from the model's config.json when they ran)."""
        if self.cfg.scratch:
            return int(self.cfg.scratch.model["max_position_embeddings"])
        if self.cfg.original_context:
            return self.cfg.original_context
        for c in self.cells:
            summary = self.out / "cells" / c.id / "eval" / "summary.json"
            if summary.exists():
                return json.loads(summary.read_text())["config"].get("original_context")
        return None


def _metric_columns(result: dict, lengths) -> dict:
    """A cell's metric columns: every task's (`metrics`), or the perplexities of a result written before
    cells recorded them."""
    return result.get("metrics") or {f"ppl@{n}": result["perplexity"].get(str(n)) for n in lengths}
