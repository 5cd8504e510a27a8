"""A sweep's combined results: per-cell CSV, the table by method x scale x budget (markdown + CSV) with 95 %
intervals, the best of each column and the differences from it that are not resolved, and the
perplexity-vs-length, NLL-by-position and training-loss figures (`evaluation.plots`: PNG and PDF, full and
column width).

Intervals: a single-seed row's come from its evaluation's per-document position blocks (the eval
bootstrap, `evaluation.statistics`); a row over several seeds shows the mean ± half the range over seeds.
A difference between two single-seed cells of one panel is resolved when the paired bootstrap interval of
ppl(A) - ppl(B) on the same documents and blocks excludes 0.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from yarn_jax.evaluation import statistics  # noqa: E402
from yarn_jax.evaluation.plots import (finite_points, lengths_axis, log_scale_if_positive, mark_context,  # noqa: E402
                                       save_paper, style)
from yarn_jax.rope import NAMED  # noqa: E402

# result.json keys that are not a varied hyperparameter
_RESULT_BASE = {"id", "group", "method", "scale", "finetune_steps", "seed", "train_final", "perplexity", "tokens",
                "metrics"}


def load_results(cells_dir: Path, ids: list[str]) -> tuple[list[dict], list[str]]:
    """(finished cells' result.json in the sweep's order, ids not finished yet)."""
    done, missing = [], []
    for cid in ids:
        path = cells_dir / cid / "result.json"
        if path.exists():
            done.append(json.loads(path.read_text()))
        else:
            missing.append(cid)
    return done, missing


def cell_blocks(cells_dir: Path, result: dict) -> dict[int, tuple[tuple[str, ...], np.ndarray, np.ndarray]]:
    """length -> (documents, NLL sums, token counts [docs, buckets]) of a cell's evaluation, read from its
    eval/cells.jsonl (the last record of each document and length)."""
    path = cells_dir / result["id"] / "eval" / "cells.jsonl"
    if not path.exists():
        return {}
    recs: dict[tuple[int, str], dict] = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if r.get("kind") == "ppl" and "bucket_sums" in r:
            recs[(r["length"], r["doc"])] = r
    out = {}
    for n in sorted({k[0] for k in recs}):
        docs = tuple(sorted(d for m, d in recs if m == n))
        out[n] = (docs, np.asarray([recs[(n, d)]["bucket_sums"] for d in docs], np.float64),
                  np.asarray([recs[(n, d)]["bucket_counts"] for d in docs], np.float64))
    return out


def _lengths(results: list[dict]) -> list[int]:
    return sorted({int(n) for r in results for n in r["perplexity"]})


def _group_key(r: dict, vary_keys: list[str]):
    return (r["finetune_steps"], r["scale"], r["method"], *(r.get(k) for k in vary_keys))


def summarize(results: list[dict], blocks: dict[str, dict] | None = None) -> tuple[list[dict], list[int], list[str]]:
    """Rows aggregated over seeds: method, scale, finetune_steps, varied fields, seeds, and for every length
    the mean perplexity with its min and max over seeds, and for single-seed rows with evaluation blocks
    (`blocks`: cell id -> cell_blocks) its 95 % interval (`lo@L`, `hi@L`), `best@L` (lowest of its panel)
    and `unresolved@L` (its paired difference from the best includes 0)."""
    blocks = blocks or {}
    lengths = _lengths(results)
    vary_keys = sorted({k for r in results for k in r} - _RESULT_BASE)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[_group_key(r, vary_keys)].append(r)
    rows = []
    for key, rs in groups.items():
        row = {"method": rs[0]["method"], "scale": rs[0]["scale"], "finetune_steps": rs[0]["finetune_steps"],
               **{k: rs[0].get(k) for k in vary_keys}, "seeds": len(rs)}
        single = blocks.get(rs[0]["id"], {}) if len(rs) == 1 else {}
        for n in lengths:
            vals = [r["perplexity"][str(n)] for r in rs if str(n) in r["perplexity"]]
            row[f"ppl@{n}"] = float(np.mean(vals)) if vals else None
            row[f"min@{n}"] = float(np.min(vals)) if vals else None
            row[f"max@{n}"] = float(np.max(vals)) if vals else None
            iv = statistics.ppl_interval(*single[n][1:]) if n in single else None
            row[f"lo@{n}"], row[f"hi@{n}"] = (iv.low, iv.high) if iv else (None, None)
        finals = [r["train_final"].get("loss") for r in rs if r.get("train_final")]
        row["final_train_loss"] = float(np.mean(finals)) if finals else None
        row["_blocks"] = single
        rows.append(row)
    rows.sort(key=lambda r: (r["finetune_steps"] > 0, r["scale"], _method_rank(r["method"]), r["method"]))
    _mark_best(rows, lengths)
    for r in rows:
        del r["_blocks"]
    return rows, lengths, vary_keys


def _panel_rows(rows: list[dict], tuned: bool, scale: float) -> list[dict]:
    """A panel's rows: its scale's cells (fine-tuned or not) and the unmodified model."""
    return [r for r in rows if (r["finetune_steps"] > 0) == tuned and (r["scale"] == scale or r["method"] == "none")]


def _mark_best(rows: list[dict], lengths: list[int]) -> None:
    """best@L and unresolved@L within each panel, from single-seed rows evaluated on the same documents."""
    for r in rows:
        for n in lengths:
            r[f"best@{n}"], r[f"unresolved@{n}"] = False, False
    for tuned, scale in _panels(rows):
        panel = _panel_rows(rows, tuned, scale)
        for n in lengths:
            cand = [r for r in panel if n in r["_blocks"] and r[f"ppl@{n}"] is not None and np.isfinite(r[f"ppl@{n}"])]
            if len(cand) < 2:
                continue
            best = min(cand, key=lambda r: r[f"ppl@{n}"])
            best[f"best@{n}"] = True
            docs, sb, cb = best["_blocks"][n]
            for r in cand:
                if r is best or r["_blocks"][n][0] != docs:
                    continue
                delta, iv = statistics.paired_ppl_difference(r["_blocks"][n][1:], (sb, cb))
                r[f"unresolved@{n}"] = not statistics.resolved(delta, iv, best[f"ppl@{n}"])


def markdown_table(rows: list[dict], lengths: list[int], vary_keys: list[str], l0: int | None) -> str:
    """Perplexity by evaluation length with its interval; the best of each panel and length in bold, a †
    on those not resolved from it."""
    head = ["method", "s", "fine-tune steps", *vary_keys, "seeds"] + [
        f"{n}" + (f" ({n / l0:g}·L0)" if l0 else "") for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['scale']:g}", str(r["finetune_steps"] or "—"), *(str(r[k]) for k in vary_keys),
                 str(r["seeds"])]
        for n in lengths:
            m = r[f"ppl@{n}"]
            if m is None:
                cells.append("—")
                continue
            if r["seeds"] > 1:
                text = f"{m:.2f} ± {(r[f'max@{n}'] - r[f'min@{n}']) / 2:.2f}"
            elif r.get(f"lo@{n}") is not None:
                text = f"{m:.2f} ({r[f'lo@{n}']:.2f}–{r[f'hi@{n}']:.2f})"
            else:
                text = f"{m:.2f}"
            if r.get(f"best@{n}"):
                text = f"**{text}**"
            elif r.get(f"unresolved@{n}"):
                text += " †"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"(a–b): 95 % bootstrap interval (documents, then position blocks; {statistics.N_BOOT} resamples, "
             "seed 0); ± : half the range over seeds.",
             "**Bold**: the lowest perplexity of its panel (scale, fine-tuned or not) and length; † : its paired "
             "95 % interval of the difference from the bold one contains 0 (not resolved)."]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _method_rank(method: str) -> int:
    order = ["none", *NAMED]
    return order.index(method) if method in order else len(order)


def _line_label(r: dict) -> str:
    """A cell's method with its varied hyperparameters: `yarn learning_rate=0.0001`."""
    return r["method"] + "".join(f" {k}={r[k]}" for k in r if k not in _RESULT_BASE and not _is_column(k))


def _is_column(k: str) -> bool:
    return "@" in k or k in ("seeds", "final_train_loss")


def _styles(labels) -> dict[str, dict]:
    """One style per line label, in a fixed order (the methods' usual order, then the labels' own)."""
    ordered = sorted(dict.fromkeys(labels), key=lambda lab: (_method_rank(lab.split(" ")[0]), lab))
    return {lab: style(i) for i, lab in enumerate(ordered)}


def _panels(results_or_rows: list[dict]) -> list[tuple[bool, float]]:
    """(fine-tuned?, scale) of every panel; the unmodified model is drawn in all of them."""
    return sorted({(r["finetune_steps"] > 0, r["scale"]) for r in results_or_rows if r["method"] != "none"}) \
        or [(False, 1.0)]


def _figure(width: float, n_panels: int):
    cols = n_panels if width > 5 else min(n_panels, 2)
    nrows = -(-n_panels // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(width, (width / cols) * 0.75 * nrows + 0.6), squeeze=False,
                             sharey=True, layout="constrained")
    for ax in axes.flat[n_panels:]:
        ax.axis("off")
    return fig, axes.flat[:n_panels]


def _finish(fig, axes, title: str, ylabel: str, width: float) -> "plt.Figure":
    axes[0].set_ylabel(ylabel)
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", frameon=False,
                   ncol=min(len(labels), 4 if width > 5 else 2))
    fig.suptitle(title)
    return fig


def _panel_title(ax, tuned: bool, scale: float) -> None:
    ax.set_title(f"s = {scale:g}, " + ("fine-tuned" if tuned else "no fine-tuning"), fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)


def plot_ppl(rows: list[dict], lengths: list[int], path: Path, title: str, l0: int | None) -> Path:
    """One panel per (fine-tuned or not, scale): perplexity against length per method, the interval (one
    seed) or the range over seeds shaded; L0 and s·L0 marked."""
    panels = _panels(rows)
    labels = {id(r): _line_label(r) + (f" ({r['finetune_steps']} steps)" if r["finetune_steps"] else "") for r in rows}
    styles = _styles(labels.values())

    def draw(width):
        fig, axes = _figure(width, len(panels))
        for ax, (tuned, scale) in zip(axes, panels):
            for r in _panel_rows(rows, tuned, scale):
                label = labels[id(r)]
                xs, ys = finite_points(lengths, [r[f"ppl@{n}"] for n in lengths], label)
                ax.plot(xs, ys, label=label, markersize=3.5, linewidth=1.1, **styles[label])
                lo, hi = ("min", "max") if r["seeds"] > 1 else ("lo", "hi")
                band = [n for n in xs if r.get(f"{lo}@{n}") is not None]
                if band:
                    ax.fill_between(band, [r[f"{lo}@{n}"] for n in band], [r[f"{hi}@{n}"] for n in band],
                                    color=styles[label]["color"], alpha=0.15, linewidth=0)
            lengths_axis(ax, lengths)
            log_scale_if_positive(ax)
            mark_context(ax, l0, [scale])
            ax.set_xlabel("evaluation length (tokens)")
            _panel_title(ax, tuned, scale)
        return _finish(fig, axes, title, "perplexity (held-out)", width)

    return save_paper(draw, path)


def position_curves(results: list[dict], cells_dir: Path) -> dict[tuple, tuple[list[float], np.ndarray]]:
    """{(fine-tuned?, scale, method, label, steps): (bucket centres, mean NLL [seeds, buckets])} from each
    cell's eval/summary.json (the NLL by position at the cell's longest evaluation length)."""
    runs: dict[tuple, list[tuple[list, list]]] = defaultdict(list)
    for r in results:
        path = cells_dir / r["id"] / "eval" / "summary.json"
        if not path.exists():
            continue
        for c in json.loads(path.read_text()).get("position_curves", {}).values():  # one method per cell
            label = _line_label(r)
            runs[(r["finetune_steps"] > 0, r["scale"], r["method"], label, r["finetune_steps"])].append(
                (c["bucket_centres"], c["mean_nll"]))
    out = {}
    for key, rs in runs.items():
        n = min(len(x) for x, _ in rs)
        out[key] = (rs[0][0][:n], np.array([y[:n] for _, y in rs]))
    return out


def plot_nll_by_position(results: list[dict], cells_dir: Path, path: Path, title: str,
                         l0: int | None) -> Path | None:
    """Mean NLL by position at the longest evaluation length, one panel per (fine-tuned or not, scale), one
    line per method (mean over seeds, range shaded): where in the window a method breaks down, which the
    perplexity over the whole window averages away."""
    curves = position_curves(results, cells_dir)
    if not curves:
        return None
    panels = _panels(results)
    labels = {k: k[3] + (f" ({k[4]} steps)" if k[0] else "") for k in curves}
    styles = _styles(labels.values())

    def draw(width):
        fig, axes = _figure(width, len(panels))
        for ax, (tuned, scale) in zip(axes, panels):
            for key, (xs, ys) in curves.items():
                c_tuned, c_scale, method = key[:3]
                if c_tuned != tuned or (c_scale != scale and method != "none"):
                    continue
                label = labels[key]
                ax.plot(xs, ys.mean(0), label=label, markersize=2.5, linewidth=1.0, **styles[label])
                if len(ys) > 1:
                    ax.fill_between(xs, ys.min(0), ys.max(0), color=styles[label]["color"], alpha=0.15, linewidth=0)
            mark_context(ax, l0, [scale])
            ax.set_xlabel("position in the window (tokens)")
            _panel_title(ax, tuned, scale)
        return _finish(fig, axes, title, "mean NLL per token (nats)", width)

    return save_paper(draw, path)


def read_metrics(path: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            steps.append(rec["step"])
            losses.append(rec["loss"])
    return steps, losses


def plot_train_loss(results: list[dict], cells_dir: Path, path: Path, title: str) -> Path | None:
    """Fine-tuning loss against step, one panel per scale, one line per method (mean over seeds, range
    shaded): the paper's training-loss comparison."""
    by_scale: dict[float, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r["finetune_steps"]:
            steps, losses = read_metrics(cells_dir / r["id"] / "train" / "metrics.jsonl")
            if steps:
                by_scale[r["scale"]][_line_label(r)].append((steps, losses))
    if not by_scale:
        return None
    scales = sorted(by_scale)
    styles = _styles(label for runs in by_scale.values() for label in runs)

    def draw(width):
        fig, axes = _figure(width, len(scales))
        for ax, scale in zip(axes, scales):
            for label, runs in by_scale[scale].items():
                n = min(len(s) for s, _ in runs)
                ys = np.array([loss[:n] for _, loss in runs])
                st = {**styles[label], "marker": None}
                ax.plot(runs[0][0][:n], ys.mean(0), label=label, linewidth=1.0, **st)
                if len(runs) > 1:
                    ax.fill_between(runs[0][0][:n], ys.min(0), ys.max(0), color=st["color"], alpha=0.15, linewidth=0)
            ax.set_title(f"fine-tuning at s = {scale:g}", fontsize="medium")
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
        return _finish(fig, axes, title, "training loss (nats/token)", width)

    return save_paper(draw, path)
