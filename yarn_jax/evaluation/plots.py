"""Figures of an evaluation run (matplotlib, Agg backend), drawn for a two-column paper.

Every figure is written four times: `NAME.png` / `NAME.pdf` at the full text width (7 in) and
`NAME_column.png` / `NAME_column.pdf` at one column's width (3.4 in). Log axes carry plain tick labels
(2048, 25, 30 — never 2.45×10^1); the original context L0 and the extended one s·L0 are marked and
labelled; each method keeps one color, marker and line style, in the legend order it has in the run, in
every figure (so methods whose curves coincide stay distinguishable).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from yarn_jax.outputs import atomic_write_text  # noqa: E402

WIDTHS = {"": 7.0, "_column": 3.4}  # inches: a two-column paper's text width and column width
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINES = ("-", "--", "-.", ":")


def save_figure(fig, path: Path, **kwargs) -> Path:
    """The figure in the format of `path`'s suffix (png, pdf), written atomically (a full disk leaves no half
    file; one-line error)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    plt.close(fig)
    atomic_write_text(path, buf.getvalue())
    return path


def save_paper(draw: Callable[[float], "plt.Figure"], path: Path) -> Path:
    """`draw(width_inches) -> figure` at both widths, each as PNG (300 dpi) and PDF; returns the full-width
    PNG's path."""
    path = path.with_suffix(".png")
    for suffix, width in WIDTHS.items():
        with plt.rc_context({"font.size": 8 if suffix else 9, "axes.titlesize": "medium", "legend.fontsize": 7,
                             "pdf.fonttype": 42, "savefig.bbox": "tight"}):
            for ext in (".png", ".pdf"):
                fig = draw(width)
                save_figure(fig, path.with_name(path.stem + suffix + ext), dpi=300 if ext == ".png" else None)
    return path


def style(i: int) -> dict:
    """The i-th method's color, marker and line style (distinct for the first 10 x 4 x 10 methods)."""
    return {"color": plt.get_cmap("tab10")(i % 10), "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINES[(i // 2) % len(_LINES)]}


def finite_points(xs, ys, label: str) -> tuple[list, list]:
    """(x, y) pairs whose y is a finite number; dropped ones are reported once as a warning (a NaN or inf
    result is still in the run's JSON/CSV; the plot shows what can be drawn)."""
    keep = [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)]
    dropped = [x for x, y in zip(xs, ys) if y is not None and not np.isfinite(y)]
    if dropped:
        warnings.warn(f"plot: {label}: non-finite value(s) at {dropped} left out", stacklevel=2)
    return [x for x, _ in keep], [y for _, y in keep]


def _plain(v, _pos=None) -> str:
    return f"{v:g}" if abs(v) < 1e6 else f"{v:.3g}"


def lengths_axis(ax, lengths) -> None:
    """A log2 x axis with exactly the evaluated lengths as plain tick labels."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if len(lengths) > 4:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")


def log_scale_if_positive(ax) -> None:
    """A log y scale with plain tick labels when the axes hold positive data spanning over 2x (matplotlib
    refuses a log scale with nothing positive to show; a narrow range reads better linear)."""
    ys = [np.asarray(ln.get_ydata(), float) for ln in ax.get_lines() if len(ln.get_ydata())]
    ys = [y[np.isfinite(y)] for y in ys]
    ys = np.concatenate([y for y in ys if y.size]) if any(y.size for y in ys) else np.array([])
    if not ys.size or ys.min() <= 0 or ys.max() / ys.min() < 2:
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def mark_context(ax, l0: int | None, scales=()) -> None:
    """Vertical lines at L0 (dashed, labelled "L0") and at each s·L0 (dotted, "s·L0") within the plotted range."""
    if not l0:
        return
    marks = [(l0, "--", "L0", 1)] + [(s * l0, ":", f"{s:g}·L0", -1) for s in sorted(set(scales)) if s > 1]
    lo, hi = sorted(ax.get_xlim())
    for x, ls, text, side in marks:
        if not lo <= x <= hi:  # outside the data: a mark would only stretch the axis
            continue  # L0's label right of its line, s·L0's left of it (often the last length)
        ax.axvline(x, color="0.4", linestyle=ls, linewidth=0.8, zorder=0)
        ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2 * side, -2),
                    textcoords="offset points", ha="left" if side > 0 else "right", va="top", fontsize="small",
                    color="0.3")


def _legend(fig, axes, ncol_full: int) -> None:
    """One legend for the figure, below the axes, in the methods' order."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol_full, frameon=False)


def _ncol(width: float, n: int) -> int:
    return min(n, 5 if width > 5 else 2)


def _height(width: float) -> float:
    """A single panel's height: 0.62 of the width at full width, taller at column width (room for a legend)."""
    return width * (0.62 if width > 5 else 0.85)


def ppl_vs_length(rows: list[dict], path: Path, title: str, l0: int | None = None, order=None) -> Path:
    """Perplexity against evaluation length, one line per method (the paper's Figure 1), 95 % intervals shaded
    where the rows carry them; L0 and s·L0 marked."""
    methods = list(order or dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    scales = {r.get("scale", 1.0) for r in rows}

    def draw(width):
        fig, ax = plt.subplots(figsize=(width, _height(width)), layout="constrained")
        for i, method in enumerate(methods):
            pts = sorted((r["length"], r["ppl"], r.get("ppl_ci_low"), r.get("ppl_ci_high")) for r in rows
                         if r["method"] == method)
            x, y = finite_points([p[0] for p in pts], [p[1] for p in pts], method)
            if not x:
                continue
            ax.plot(x, y, label=method, markersize=4, linewidth=1.2, **style(i))
            band = [(p[0], p[2], p[3]) for p in pts if p[2] is not None and np.isfinite([p[2], p[3]]).all()]
            if band:
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                color=style(i)["color"], alpha=0.1, linewidth=0)
        lengths_axis(ax, lengths)
        log_scale_if_positive(ax)
        mark_context(ax, l0, scales)
        ax.set_xlabel("evaluation length (tokens)")
        ax.set_ylabel("perplexity")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        _legend(fig, [ax], _ncol(width, len(methods)))
        return fig

    return save_paper(draw, path)


def nll_vs_position(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                    l0: int | None = None) -> Path:
    """Mean NLL by position bucket, one line per method: {method: (bucket centres, mean NLL)}; L0 marked."""
    def draw(width):
        fig, ax = plt.subplots(figsize=(width, _height(width)), layout="constrained")
        for i, (method, (x, y)) in enumerate(curves.items()):
            ax.plot(*finite_points(x, y, method), label=method, markersize=3, linewidth=1.2, **style(i))
        mark_context(ax, l0)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_plain))
        ax.set_xlabel("position in the window (tokens)")
        ax.set_ylabel("mean NLL (nats)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        _legend(fig, [ax], _ncol(width, len(curves)))
        return fig

    return save_paper(draw, path)


def depth_heatmap(acc: dict[str, dict[tuple[int, float], float]], path: Path, label: str = "accuracy",
                  title: str | None = None) -> Path:
    """Score per (length, depth), one panel per method (the methods' order), each cell's value written in it
    (grids up to 12 x 12), a shared color bar."""
    methods = list(acc)

    def draw(width):
        cols = len(methods) if width > 5 else min(len(methods), 2)
        rows = -(-len(methods) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(width, 2.3 * rows + 0.4), squeeze=False, layout="constrained")
        im = None
        for k, ax in enumerate(axes.flat):
            if k >= len(methods):
                ax.axis("off")
                continue
            method = methods[k]
            lengths = sorted({key[0] for key in acc[method]})
            depths = sorted({key[1] for key in acc[method]})
            grid = np.array([[acc[method].get((n, d), np.nan) for n in lengths] for d in depths])
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            if grid.shape[0] <= 12 and grid.shape[1] <= 12:
                for (r, c), v in np.ndenumerate(grid):
                    if np.isfinite(v):
                        ax.text(c, r, f"{v:.0%}", ha="center", va="center", fontsize="x-small")
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45, ha="right")
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
            ax.set_title(method, fontsize="medium")
            if k % cols == 0:
                ax.set_ylabel("depth")
            if k // cols == rows - 1:
                ax.set_xlabel("prompt length")
        fig.colorbar(im, ax=axes, shrink=0.8, label=label)
        if title:
            fig.suptitle(title)
        return fig

    return save_paper(draw, path)


def task_vs_length(rows: list[dict], path: Path, metric: str, title: str, l0: int | None = None,
                   panels: list[str] | None = None, order=None) -> Path:
    """Small multiples: one panel per task (rows' `task`), `metric` against length per method with its 95 %
    interval shaded; L0 and s·L0 marked."""
    panels = [p for p in (panels or dict.fromkeys(r["task"] for r in rows)) if any(r["task"] == p for r in rows)]
    methods = list(order or dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    scales = {r.get("scale", 1.0) for r in rows}

    def draw(width):
        cols = min(len(panels), 4 if width > 5 else 2)
        nrows = -(-len(panels) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(width, 1.7 * nrows * (7.0 / width) ** 0.3 + 0.6),
                                 squeeze=False, sharex=True, sharey=True, layout="constrained")
        for k, ax in enumerate(axes.flat):
            if k >= len(panels):
                ax.axis("off")
                continue
            for i, method in enumerate(methods):
                pts = sorted((r["length"], r[metric], r["ci_low"], r["ci_high"]) for r in rows
                             if r["task"] == panels[k] and r["method"] == method)
                if not pts:
                    continue
                x = [p[0] for p in pts]
                ax.plot(x, [p[1] for p in pts], label=method, markersize=3, linewidth=1.0, **style(i))
                ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], color=style(i)["color"], alpha=0.12,
                                linewidth=0)
            lengths_axis(ax, lengths)
            mark_context(ax, l0, scales)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(panels[k], fontsize="medium")
            ax.grid(True, alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel(metric)
        for ax in axes[-1]:
            ax.set_xlabel("length (tokens)")
        fig.suptitle(title)
        _legend(fig, axes.flat, _ncol(width, len(methods)))
        return fig

    return save_paper(draw, path)
