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

from yarn_jax.evaluation.methods import display_label  # noqa: E402
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


def nice_ticks(lo: float, hi: float, max_ticks: int = 7) -> list[float]:
    """Round values for a log axis over [lo, hi] (positive): the finest of the mantissa sets 1 | 1, 2, 5 |
    1, 1.5, 2, 3, 5, 7 | 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (x 10^k) that gives at most `max_ticks` ticks,
    so a 20-30 range reads 20, 22, 25, 28 ... not just 20 — at the data's scale."""
    best: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8),
                      (1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2, 2.2, 2.5, 2.8, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** k for k in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
                 for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) > max_ticks:
            break
        best = ticks
    return best


def value_axis(ax, lo: float, hi: float) -> None:
    """The y axis over [lo, hi] with 4 % margins: log with round plain ticks when the data are positive and
    span 1.5x or more, else linear (matplotlib's own nice ticks)."""
    if lo > 0 and hi / lo >= 1.5:
        ax.set_yscale("log")
        pad = (hi / lo) ** 0.04
        ax.set_ylim(lo / pad, hi * pad)
        ticks = nice_ticks(lo / pad, hi * pad)
        if len(ticks) >= 2:
            ax.set_yticks(ticks, [_plain(t) for t in ticks])
            ax.yaxis.set_minor_locator(ticker.NullLocator())
            return
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        return
    pad = 0.04 * (hi - lo) or 0.04 * abs(hi) or 1.0
    ax.set_ylim(lo - pad, hi + pad)


def dodge(x: float, i: int, n: int, spread: float = 0.03) -> float:
    """x moved sideways on a log2 axis for the i-th of n methods, so equal values and their intervals stay
    apart (2^(±spread/2 ... ) of a step)."""
    return x * 2.0 ** ((i - (n - 1) / 2) * spread)


def direct_labels(ax, ends: list[tuple[str, float, float, tuple]], fontsize: float) -> None:
    """Each line's name beside the axes at the height of its last point, in its colour, joined to it by a
    thin leader; names are pushed apart so none overlaps (a legend the eye need not travel to)."""
    if not ends:
        return
    lo, hi = ax.get_ylim()
    log = ax.get_yscale() == "log"
    frac = [((np.log(y) - np.log(lo)) / (np.log(hi) - np.log(lo))) if log else (y - lo) / (hi - lo)
            for _, _, y, _ in ends]
    height_pt = ax.get_position().height * ax.figure.get_figheight() * 72
    gap = 1.6 * fontsize / height_pt
    order = sorted(range(len(ends)), key=lambda k: frac[k])
    placed = [0.0] * len(ends)
    prev = -np.inf
    for k in order:
        placed[k] = max(frac[k], prev + gap)
        prev = placed[k]
    overflow = max(placed) - 1.0
    if overflow > 0:  # the column ran off the top: shift it down, keep the spacing
        placed = [p - overflow for p in placed]
    for k, (text, x, y, color) in enumerate(ends):
        ax.annotate(text, xy=(x, y), xycoords="data", xytext=(1.03, placed[k]), textcoords="axes fraction",
                    va="center", ha="left", color=color, fontsize=fontsize, annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3})


def interval_bars(ax, x, y, lo, hi, color) -> None:
    """95 % intervals as thin capped bars (readable where shaded bands of several methods would merge)."""
    keep = [(a, b, c, d) for a, b, c, d in zip(x, y, lo, hi)
            if c is not None and d is not None and np.isfinite([b, c, d]).all()]
    if keep:
        xs, ys, ls, hs = (np.asarray(v, float) for v in zip(*keep))
        ax.errorbar(xs, ys, yerr=[ys - ls, hs - ys], fmt="none", ecolor=color, elinewidth=0.8, capsize=2,
                    capthick=0.8, alpha=0.85)


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
    """Perplexity against evaluation length, one line per method (the paper's Figure 1): the methods named
    as papers name them, directly at their lines' ends; 95 % intervals as bars where the rows carry them,
    the methods nudged apart along x so coinciding curves stay visible; round ticks at the data's scale;
    L0 and s·L0 marked."""
    methods = list(order or dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    scales = {r.get("scale", 1.0) for r in rows}

    def draw(width):
        fig, ax = plt.subplots(figsize=(width, _height(width)))
        fig.subplots_adjust(left=0.1 if width > 5 else 0.17, right=0.76 if width > 5 else 0.62, bottom=0.14,
                            top=0.9)
        ends, values = [], []
        for i, method in enumerate(methods):
            pts = sorted((r["length"], r["ppl"], r.get("ppl_ci_low"), r.get("ppl_ci_high")) for r in rows
                         if r["method"] == method)
            x, y = finite_points([p[0] for p in pts], [p[1] for p in pts], method)
            if not x:
                continue
            finite = [p for p in pts if p[1] is not None and np.isfinite(p[1])]
            xd = [dodge(v, i, len(methods)) for v in x]
            st = style(i)
            ax.plot(xd, y, markersize=3.5, linewidth=1.2, **st)
            interval_bars(ax, xd, y, [p[2] for p in finite], [p[3] for p in finite], st["color"])
            values += y + [v for p in finite for v in p[2:] if v is not None and np.isfinite(v)]
            ends.append((display_label(method), xd[-1], y[-1], st["color"]))
        lengths_axis(ax, lengths)
        ax.set_xlim(lengths[0] / 2 ** 0.2, lengths[-1] * 2 ** 0.2)
        if values:
            value_axis(ax, min(values), max(values))
        mark_context(ax, l0, scales)
        ax.set_xlabel("evaluation length (tokens)")
        ax.set_ylabel("perplexity")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        direct_labels(ax, ends, fontsize=7 if width > 5 else 6.5)
        return fig

    return save_paper(draw, path)


def nll_vs_position(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                    l0: int | None = None) -> Path:
    """Mean NLL by position bucket, one line per method: {method: (bucket centres, mean NLL)}; L0 marked."""
    def draw(width):
        fig, ax = plt.subplots(figsize=(width, _height(width)), layout="constrained")
        for i, (method, (x, y)) in enumerate(curves.items()):
            ax.plot(*finite_points(x, y, method), label=display_label(method), markersize=3, linewidth=1.2,
                    **style(i))
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
            ax.set_title(display_label(method), fontsize="medium")
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
    interval as a bar (drawn at any number of trials; methods nudged apart along x); L0 and s·L0 marked."""
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
                x = [dodge(p[0], i, len(methods)) for p in pts]
                ax.plot(x, [p[1] for p in pts], label=display_label(method), markersize=3, linewidth=1.0,
                        **style(i))
                interval_bars(ax, x, [p[1] for p in pts], [p[2] for p in pts], [p[3] for p in pts],
                              style(i)["color"])
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
