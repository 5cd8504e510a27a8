"""Figures read at a glance (yarn_jax/evaluation/plots.py): round ticks at the data's scale, direct labels
that never overlap, methods by the names papers use, intervals drawn whatever the number of trials."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from yarn_jax.evaluation import plots  # noqa: E402


@pytest.mark.parametrize("lo, hi, want", [
    (20.0, 90.0, [20, 25, 30, 40, 50, 60, 80]),  # 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (the finest gives 13 > 7)
    (23.5, 40.0, [25, 28, 30, 35, 40]),          # a narrow range: the finest set
    (0.5, 800.0, [1, 10, 100]),                  # a wide range: decades (1, 2, 5 would give 10 ticks)
])
def test_nice_ticks_are_round_and_at_the_datas_scale(lo, hi, want):
    assert plots.nice_ticks(lo, hi) == pytest.approx(want)


def test_direct_labels_never_overlap_even_for_equal_values():
    fig, ax = plt.subplots(figsize=(7, 4.3))
    fig.subplots_adjust(right=0.76)
    ax.set_xscale("log", base=2)
    ax.set_xlim(1024, 20000)
    ax.set_yscale("log")
    ax.set_ylim(20, 90)
    ends = [(f"method {k}", 16384, 25.3, "C0") for k in range(4)] + [("top", 16384, 89.0, "C1")]
    plots.direct_labels(ax, ends, fontsize=7)
    fig.canvas.draw()
    boxes = [matplotlib.text.Text.get_window_extent(t) for t in ax.texts]  # the text, not its leader
    assert len(boxes) == 5
    for i in range(5):
        for j in range(i + 1, 5):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    plt.close(fig)


def test_the_perplexity_figure_names_methods_as_papers_do_and_draws_each_interval(tmp_path):
    rows = [{"method": m, "length": n, "ppl": p, "ppl_ci_low": p * 0.9, "ppl_ci_high": p * 1.1, "scale": 2.0}
            for m, p in (("none", 24.5), ("yarn x2", 25.2), ("dynamic_yarn x2", 24.5)) for n in (2048, 16384)]
    drawn = []
    original = plots.save_paper

    def keep(draw, path):  # the figure as drawn, before it is saved
        drawn.append(draw(7.0))
        return original(draw, path)

    plots.save_paper = keep
    try:
        plots.ppl_vs_length(rows, tmp_path / "p.png", "t", l0=8192)
    finally:
        plots.save_paper = original
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.texts if "×" in t.get_text() or t.get_text() == "none"] == [
        "none", "YaRN ×2", "Dynamic-YaRN ×2"]
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(bars) == 3  # one set of interval bars per method
    xs = [line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() in plots._MARKERS]  # the methods' lines
    assert len(set(np.round(xs, 3))) == 3  # equal values nudged apart along x
    assert (tmp_path / "p.png").exists() and (tmp_path / "p_column.pdf").exists()
