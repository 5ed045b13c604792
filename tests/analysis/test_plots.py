"""The three plots: what each one shows (points, labels, edges, verdicts) and that it saves as a PNG."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import LineCollection

import analysis
from analysis import plots

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def df(built):
    return analysis.lineage(built.root)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_progress_labels_each_new_best_with_its_description(df, built, tmp_path):
    fig = plots.progress(df)
    labels = _texts(fig)
    ids = built.ids
    # New bests in order: baseline, MATRIX_LR, warmdown. The merge (0.96) and softcap (1.02) are not.
    assert [t.split(":")[0] for t in labels] == [ids["base"], ids["lr"], ids["warm"]]
    assert "raise MATRIX_LR to 0.05" in labels[1]
    ax = fig.axes[0]
    step = [line for line in ax.lines if line.get_label() == "running best"][0]
    assert np.nanmin(step.get_ydata()) == pytest.approx(0.95)
    assert "7 experiments" in ax.get_title() and "2 failed" in ax.get_title()
    out = plots.save(fig, tmp_path / "p.png")
    assert out.read_bytes().startswith(PNG)


def test_lineage_tree_draws_every_edge_and_the_crossover_dashed(df, built):
    fig = plots.lineage_tree(df)
    ax = fig.axes[0]
    cols = [c for c in ax.collections if isinstance(c, LineCollection)]
    solid, dashed = cols
    assert len(solid.get_segments()) == len(df) - 1  # every child's first parent
    assert len(dashed.get_segments()) == 1  # the merge's second parent
    (start, end), = dashed.get_segments()  # fmt: skip
    x, y = plots.tree_layout(df)
    idx = {i: n for n, i in enumerate(df["id"])}
    assert tuple(start) == (x[idx[built.ids["cap"]]], y[idx[built.ids["cap"]]])
    assert tuple(end) == (x[idx[built.ids["merge"]]], y[idx[built.ids["merge"]]])
    assert any(f"champion {built.ids['warm']}" == t.get_text() for t in ax.get_legend().get_texts())
    assert len(fig.axes) == 2  # the colour bar of val_bpb
    assert plots.png_bytes(fig).startswith(PNG)


def test_tree_layout_puts_children_right_of_their_parents():
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 500
    parent = [None] + [f"i{rng.integers(0, k)}" for k in range(1, n)]
    gen: list[int] = []
    for k in range(n):
        gen.append(0 if parent[k] is None else gen[int(parent[k][1:])] + 1)
    d = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "parent": parent, "generation": gen})
    x, y = plots.tree_layout(d)
    kids = np.arange(1, n)
    parents = np.array([int(p[1:]) for p in parent[1:]])
    assert (x[kids] > x[parents]).all() and ((y >= 0) & (y <= 1)).all()
    for g in np.unique(x):  # one spot per individual in each generation
        assert len(np.unique(y[x == g])) == (x == g).sum()


def test_transfer_plots_the_verdicts_and_says_when_there_is_no_validation(df, built, tmp_path):
    fig = plots.transfer(df)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"transfers", "does not transfer", "inconclusive"} <= set(legend)
    assert sorted(_texts(fig)) == sorted([built.ids["lr"], built.ids["warm"], built.ids["merge"]])
    assert "3 validated" in ax.get_title() and "Spearman" in ax.get_title()

    from analysis_support import build_run

    plain = analysis.lineage(build_run(tmp_path / "ws", validate=False).root)
    empty = plots.transfer(plain)
    assert any("No validation yet" in t for t in _texts(empty))
    assert plots.png_bytes(empty).startswith(PNG)


def test_plots_of_a_run_without_scores_still_draw(built, tmp_path):
    import shutil

    clone = tmp_path / "clone"
    shutil.copytree(built.root, clone)
    shutil.rmtree(clone / ".evolve")
    git_only = analysis.lineage(clone)
    for name, draw in plots.PLOTS.items():
        assert plots.png_bytes(draw(git_only)).startswith(PNG), name
    assert any("no scored experiments" in t for t in _texts(plots.progress(git_only)))
