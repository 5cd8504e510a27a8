"""The seam between the evaluation runner and its tasks.

A task (perplexity, passkey, ...) says which cells a config asks for, computes one cell into a record,
and turns the stored records into its sections of summary.json, its CSV, plots, a table and flat metrics
for sweeps. The runner owns everything else: loading the model, resolving the methods once, the run
directory (one record per finished cell, skipped on a re-run), progress, the summary file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar

from rich.console import Console
from rich.table import Table

from yarn_jax.pretrained import LoadedModel
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.evaluation.methods import Method
from yarn_jax.model import Llama
from yarn_jax.rope import RopeConfig
from yarn_jax.rundir import RunStore


@dataclasses.dataclass
class RunContext:
    """What every task of one run shares."""

    cfg: EvalConfig
    model: LoadedModel
    tokenizer: Any  # tokenizers.Tokenizer
    methods: list[Method]
    ropes: dict[str, RopeConfig]  # method key -> its rope on this model, resolved (and validated) once
    bos: int | None
    console: Console
    original_context: int = 0  # L0 the named methods are scaled from
    pairs: list = dataclasses.field(default_factory=list)  # (Method, Method) pairs to compare
    store: RunStore | None = None  # set once the inputs are known
    ident: str = ""  # identity of the model and tokenizer: part of every cell key

    @property
    def model_name(self) -> str:
        """The model as a figure names it: the bundled one by its name, else its directory or file (a
        training run's checkpoints by the run)."""
        if self.cfg.model == "smollm2":
            return "SmolLM2-135M-Instruct"
        parts = [p for p in self.cfg.model.rstrip("/").split("/") if p]
        while len(parts) > 1 and (parts[-1].isdigit() or parts[-1] == "checkpoints"):
            parts.pop()
        return parts[-1] if parts else self.cfg.model

    @property
    def data_name(self) -> str:
        """The corpus as a figure names it."""
        return "Shakespeare" if self.cfg.data == "shakespeare" else self.cfg.data.rstrip("/").split("/")[-1]

    def key(self, *parts) -> str:
        """A cell key: the settings that produced it, then the inputs' identity."""
        return "|".join(map(str, (*parts, self.ident)))

    def module(self, method: Method) -> Llama:
        """The model under a method's rope (the same parameter arrays)."""
        if method.rope is None:
            return self.model.module
        return self.model.module.replace(config=dataclasses.replace(self.model.config, rope=self.ropes[method.key]))

    def rope_columns(self, method: Method) -> dict:
        """The method's resolved rope as table columns: its type, scale factor (1 without one) and L0."""
        rope = self.ropes[method.key]
        return {"rope_type": rope.rope_type, "scale": float(getattr(rope.method, "factor", 1.0)),
                "original_context": rope.original_max_position_embeddings}

    def records(self, keys) -> list[dict]:
        """The stored records of these cell keys (finished ones only)."""
        return [r for r in (self.store.get(k) for k in keys) if r]


def copied(first: dict, method: Method) -> dict:
    """The record of a method whose frequencies equal those of the method that computed `first` on this cell:
    its scores, under this method's name, marked `same_as`."""
    return {**first, "method": method.label, "rope": method.rope, "seconds": 0.0, "same_as": first["method"]}


@dataclasses.dataclass(frozen=True)
class Cell:
    key: str  # where its record is stored
    label: str  # shown while it runs
    work: int  # progress units (e.g. forwards)
    args: tuple  # what the task needs to compute it


class Task:
    """One evaluation task. Subclasses set `name` (its summary section and CSV rows) and implement `cells`,
    `run` and `summarize`; the rest has defaults."""

    name: ClassVar[str]
    unit: ClassVar[str] = "tokens"  # what a cell's `work` counts (the progress report's unit): tokens run
    # through the model, so cells of different lengths weigh in the ETA by their size

    @staticmethod
    def check_config(cfg: EvalConfig) -> None:
        """Checks needing no model (run before it loads)."""

    def prepare(self, ctx: RunContext) -> dict:
        """Checks and inputs before any compute; returns the identities of inputs the task adds (recorded in
        the run directory, e.g. document digests)."""
        return {}

    def describe(self) -> str:
        """What the run will show about the task's inputs (after `prepare`), e.g. its documents."""
        return ""

    def cells(self, ctx: RunContext) -> list[Cell]:
        raise NotImplementedError

    def run(self, ctx: RunContext, cell: Cell, advance: Callable[[int], None]) -> dict:
        """The record of one cell (`advance(k)` reports progress in the cell's work units)."""
        raise NotImplementedError

    def summarize(self, ctx: RunContext) -> dict:
        """Its sections of summary.json from the stored records; `summary[name]` holds its CSV rows."""
        raise NotImplementedError

    def compare(self, ctx: RunContext, a: Method, b: Method) -> list[dict]:
        """Paired differences a - b on the same documents / trials: {metric, delta, ci_low, ci_high, n, scale}
        each (`scale`: the magnitude of the values compared, for the rounding threshold)."""
        return []

    def plots(self, ctx: RunContext, summary: dict, out: Path) -> list[Path]:
        return []

    def table(self, ctx: RunContext, summary: dict) -> Table | None:
        return None

    def metrics(self, summary: dict) -> dict[str, float]:
        """Flat columns for a sweep's tables (e.g. ppl@4096)."""
        return {}

    def check(self, ctx: RunContext, summary: dict) -> None:
        """Raise when a finished run's results are unusable (after they are written)."""
