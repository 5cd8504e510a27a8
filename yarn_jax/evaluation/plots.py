"""PNG plots of an evaluation run (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from yarn_jax.outputs import atomic_write_text  # noqa: E402


def save_figure(fig, path: Path, **kwargs) -> Path:
    """The figure as a PNG at `path`, written atomically (a full disk leaves no half image; one-line error)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    plt.close(fig)
    atomic_write_text(path, buf.getvalue())
    return path


def finite_points(xs, ys, label: str) -> tuple[list, list]:
    """(x, y) pairs whose y is a finite number; dropped ones are reported once as a warning (a NaN or inf
    result is still in the run's JSON/CSV; the plot shows what can be drawn)."""
    keep = [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)]
    dropped = [x for x, y in zip(xs, ys) if y is not None and not np.isfinite(y)]
    if dropped:
        warnings.warn(f"plot: {label}: non-finite value(s) at {dropped} left out", stacklevel=2)
    return [x for x, _ in keep], [y for _, y in keep]


def log_scale_if_positive(ax) -> None:
    """A log y scale when the axes hold positive data (matplotlib refuses one with none to show)."""
    if any(len(v) and np.nanmax(np.asarray(v, float)) > 0 for v in (ln.get_ydata() for ln in ax.get_lines())):
        ax.set_yscale("log")


def mark_original_context(ax, l0: int | None) -> None:
    """A dashed vertical line at the original context L0 (where an unscaled rope leaves its training)."""
    if l0:
        ax.axvline(l0, color="0.45", linestyle="--", linewidth=1, zorder=0, label=f"L0 = {l0}")


def ppl_vs_length(rows: list[dict], path: Path, title: str, l0: int | None = None) -> Path:
    """Perplexity against evaluation length, one line per method (the paper's Figure 1 layout); L0 dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["length"], r["ppl"]) for r in rows if r["method"] == method)
        x, y = finite_points([p[0] for p in pts], [p[1] for p in pts], method)
        ax.plot(x, y, marker="o", label=method)
    ax.set_xscale("log", base=2)
    lengths = sorted({r["length"] for r in rows})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    log_scale_if_positive(ax)
    mark_original_context(ax, l0)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def nll_vs_position(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                    l0: int | None = None) -> Path:
    """Mean NLL by position bucket, one line per method: {method: (bucket centres, mean NLL)}; L0 dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, (x, y) in curves.items():
        ax.plot(*finite_points(x, y, method), marker=".", label=method)
    mark_original_context(ax, l0)
    ax.set_xlabel("position in the window (tokens)")
    ax.set_ylabel("mean NLL (nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def passkey_heatmap(acc: dict[str, dict[tuple[int, float], float]], path: Path) -> Path:
    """Accuracy per (length, depth), one panel per method."""
    methods = list(acc)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods) + 1, 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        lengths = sorted({k[0] for k in acc[method]})
        depths = sorted({k[1] for k in acc[method]})
        grid = np.array([[acc[method].get((n, d), np.nan) for n in lengths] for d in depths])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("prompt length")
    axes[0][0].set_ylabel("key depth")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    return save_figure(fig, path, dpi=120, bbox_inches="tight")
