"""A sweep's combined results: per-cell CSV, the table by method x scale x budget with the spread over
seeds (markdown + CSV), perplexity-vs-length, NLL-by-position and training-loss plots (PNG)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from yarn_jax.evaluation.plots import finite_points, log_scale_if_positive, save_figure  # noqa: E402
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


def _lengths(results: list[dict]) -> list[int]:
    return sorted({int(n) for r in results for n in r["perplexity"]})


def _group_key(r: dict, vary_keys: list[str]):
    return (r["finetune_steps"], r["scale"], r["method"], *(r.get(k) for k in vary_keys))


def summarize(results: list[dict]) -> tuple[list[dict], list[int], list[str]]:
    """Rows aggregated over seeds: method, scale, finetune_steps, varied fields, seeds, and for every length
    the mean perplexity with its min and max over seeds."""
    lengths = _lengths(results)
    vary_keys = sorted({k for r in results for k in r} - _RESULT_BASE)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[_group_key(r, vary_keys)].append(r)
    rows = []
    for key, rs in groups.items():
        row = {"method": rs[0]["method"], "scale": rs[0]["scale"], "finetune_steps": rs[0]["finetune_steps"],
               **{k: rs[0].get(k) for k in vary_keys}, "seeds": len(rs)}
        for n in lengths:
            vals = [r["perplexity"][str(n)] for r in rs if str(n) in r["perplexity"]]
            row[f"ppl@{n}"] = float(np.mean(vals)) if vals else None
            row[f"min@{n}"] = float(np.min(vals)) if vals else None
            row[f"max@{n}"] = float(np.max(vals)) if vals else None
        finals = [r["train_final"].get("loss") for r in rs if r.get("train_final")]
        row["final_train_loss"] = float(np.mean(finals)) if finals else None
        rows.append(row)
    rows.sort(key=lambda r: (r["finetune_steps"] > 0, r["scale"], r["method"]))
    return rows, lengths, vary_keys


def markdown_table(rows: list[dict], lengths: list[int], vary_keys: list[str], l0: int | None) -> str:
    """Perplexity by evaluation length; `a ± b` = mean over seeds ± half their range."""
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
            elif r["seeds"] > 1:
                cells.append(f"{m:.2f} ± {(r[f'max@{n}'] - r[f'min@{n}']) / 2:.2f}")
            else:
                cells.append(f"{m:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def method_color(method: str) -> str:
    """One color per method in every panel and plot (tab10 in the methods' usual order)."""
    order = ["none", *NAMED]
    return plt.get_cmap("tab10")(order.index(method) % 10 if method in order else 9)


def plot_ppl(rows: list[dict], lengths: list[int], path: Path, title: str, l0: int | None) -> Path:
    """One panel per (fine-tuned or not, scale): perplexity against length per method, seed range shaded."""
    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False, sharey=True)
    for ax, (tuned, scale) in zip(axes[0], panels):
        for r in rows:
            if (r["finetune_steps"] > 0) != tuned or (r["scale"] != scale and r["method"] != "none"):
                continue
            label = r["method"] + (f" ({r['finetune_steps']} steps)" if tuned else "")
            xs, ys = finite_points(lengths, [r[f"ppl@{n}"] for n in lengths], label)
            line, = ax.plot(xs, ys, marker="o", label=label,
                            color=method_color(r["method"]), linestyle="--" if r["method"] == "none" else "-")
            if r["seeds"] > 1:
                ax.fill_between(xs, [r[f"min@{n}"] for n in xs], [r[f"max@{n}"] for n in xs],
                                color=line.get_color(), alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        log_scale_if_positive(ax)
        _label_panel(ax, tuned, scale, l0, "evaluation length (tokens)")
    return _save(fig, axes, path, title, "perplexity (held-out)")


def _label_panel(ax, tuned: bool, scale: float, l0: int | None, xlabel: str) -> None:
    if l0:
        ax.axvline(l0, color="grey", linewidth=0.8)
        ax.axvline(l0 * scale, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel(xlabel + ("; lines at L0 and s·L0" if l0 else ""))
    ax.set_title(f"s = {scale:g}, " + ("fine-tuned" if tuned else "no fine-tuning"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, axes, path: Path, title: str, ylabel: str) -> Path:
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _line_label(r: dict) -> str:
    """A cell's method with its varied hyperparameters: `yarn learning_rate=0.0001`."""
    return r["method"] + "".join(f" {k}={r[k]}" for k in r if k not in _RESULT_BASE)


def _panels(results_or_rows: list[dict]) -> list[tuple[bool, float]]:
    """(fine-tuned?, scale) of every panel; the unmodified model is drawn in all of them."""
    return sorted({(r["finetune_steps"] > 0, r["scale"]) for r in results_or_rows if r["method"] != "none"}) \
        or [(False, 1.0)]


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
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False, sharey=True)
    for ax, (tuned, scale) in zip(axes[0], panels):
        for (c_tuned, c_scale, method, label, steps), (xs, ys) in curves.items():
            if c_tuned != tuned or (c_scale != scale and method != "none"):
                continue
            # several lines of one method (a hyperparameter axis) take the color cycle instead
            same = sum(1 for k in curves if k[:3] == (c_tuned, c_scale, method)) > 1
            line, = ax.plot(xs, ys.mean(0), marker=".", color=None if same else method_color(method),
                            label=label + (f" ({steps} steps)" if tuned else ""),
                            linestyle="--" if method == "none" else "-")
            if len(ys) > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
        _label_panel(ax, tuned, scale, l0, "position in the window (tokens)")
    return _save(fig, axes, path, title, "mean NLL per token (nats)")


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
                label = _line_label(r)
                by_scale[r["scale"]][(label, r["method"])].append((steps, losses))
    if not by_scale:
        return None
    scales = sorted(by_scale)
    fig, axes = plt.subplots(1, len(scales), figsize=(5.2 * len(scales), 4.0), squeeze=False)
    for ax, scale in zip(axes[0], scales):
        for (label, method), runs in by_scale[scale].items():
            n = min(len(s) for s, _ in runs)
            ys = np.array([loss[:n] for _, loss in runs])
            # several lines of one method (a hyperparameter axis) share its color family via the cycle
            same = sum(1 for (_, m) in by_scale[scale] if m == method) > 1
            line, = ax.plot(runs[0][0][:n], ys.mean(0), label=label, color=None if same else method_color(method))
            if len(runs) > 1:
                ax.fill_between(runs[0][0][:n], ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(f"fine-tuning at s = {scale:g}")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, axes, path, title, "training loss (nats/token)")
