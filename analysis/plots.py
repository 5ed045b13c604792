"""The three pictures of a run, drawn from a lineage frame: progress, lineage tree, transfer.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global state), so they can be drawn from any thread or a headless server. Large runs stay fast:
positions are computed with numpy, edges are one `LineCollection`, nodes one `scatter`, dense
layers are rasterized, and only a bounded number of labels is drawn.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .frames import first_parent_chain, leaderboard, one_run

MAX_LABELS = 25  # descriptions on the progress plot; ids on the tree
DPI = 110
_VERDICT_COLOURS = {"transfers": "#2a9d3f", "does not transfer": "#d62728", "inconclusive": "#f0a30a"}


def _figure(width: float = 12.0, height: float = 6.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


def _short(text: object, limit: int = 48) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _title(d: pd.DataFrame, what: str) -> str:
    run = d["run"].iloc[0] if len(d) else "?"
    depth = d["depth"].dropna()
    return f"{what} (run {run}" + (f", depth {int(depth.iloc[0])})" if len(depth) else ")")


def running_best(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best score so far at each experiment (NaN before the first score) and where a new best was set."""
    scored = ~np.isnan(y)
    best = np.fmin.accumulate(np.where(scored, y, np.inf))
    record = scored & (y <= best) & np.r_[True, y[1:] < best[:-1]]
    return np.where(np.isfinite(best), best, np.nan), record


def progress(df: pd.DataFrame, run: str | None = None) -> Figure:
    """Every experiment as a point, the running best as a step line, new bests labelled."""
    d = one_run(df, run).sort_values("created", kind="stable")
    fig, ax = _figure()
    x = np.arange(1, len(d) + 1)
    y = d["val_bpb_mean"].to_numpy(dtype=float)
    scored = ~np.isnan(y)
    if not scored.any():
        ax.text(0.5, 0.5, "no scored experiments yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(_title(d, "Progress"))
        return fig
    best, record = running_best(y)
    lo, hi = float(np.nanmin(y)), float(np.nanquantile(y, 0.95))
    base = d.loc[d["parents"].map(len) == 0, "val_bpb_mean"].dropna()
    if len(base):
        hi = max(hi, float(base.iloc[0]))
    pad = max((hi - lo) * 0.08, 1e-4)
    top = hi + pad
    over = scored & (y > top)
    kept = scored & ~record & ~over
    ax.scatter(x[kept], y[kept], s=10, c="#b0b0b0", label="experiment", rasterized=len(d) > 2000, zorder=2)
    if over.any():
        ax.scatter(
            x[over], np.full(over.sum(), top), s=14, marker="^", c="#b0b0b0", label="off the scale", zorder=2
        )
    failed = ~scored & d["status"].isin(["failed", "rejected"]).to_numpy()
    if failed.any():
        ax.scatter(
            x[failed], np.full(failed.sum(), top), s=16, marker="x", c="#d62728", label="failed / rejected"
        )
    ax.step(x, best, where="post", c="#2a9d3f", lw=1.8, label="running best")
    ax.scatter(
        x[record], y[record], s=36, c="#2a9d3f", edgecolors="black", lw=0.5, label="new best", zorder=3
    )
    # Label the biggest steps down, spread along the x axis so that labels don't pile up.
    steps = np.flatnonzero(record)
    gains = np.r_[np.inf, -np.diff(y[steps])]
    gap = len(d) / (2 * MAX_LABELS)
    picked: list[int] = []
    for i in steps[np.argsort(-gains, kind="stable")]:
        if all(abs(i - j) >= gap for j in picked):
            picked.append(int(i))
            if len(picked) == MAX_LABELS:
                break
    shown = sorted(picked)
    desc = d["description"].to_numpy()
    ids = d["id"].to_numpy()
    for i in shown:
        right_half = x[i] > 0.6 * len(d)  # labels of late points grow leftwards, so they stay inside
        ax.annotate(
            f"{ids[i]}: {_short(desc[i])}", (x[i], y[i]), xytext=(-4 if right_half else 4, 6),
            textcoords="offset points", fontsize=7, rotation=20, color="#1d6b2c",
            ha="right" if right_half else "left", va="bottom",
        )  # fmt: skip
    ax.set_ylim(lo - pad, top + 2.5 * pad)
    ax.set_xlabel("experiment #")
    ax.set_ylabel("val_bpb (lower is better)")
    n_failed = int(d["status"].isin(["failed", "rejected"]).sum())
    ax.set_title(
        _title(
            d,
            f"Progress: {len(d)} experiments, {int(record.sum())} new bests, {n_failed} failed, best {np.nanmin(y):.4f}",
        )
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def tree_layout(d: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) per row: x the generation, y a spot in its generation ordered by the first parent's spot.

    One numpy sort per generation; every generation is spread over [0, 1]."""
    gen = d["generation"].fillna(0).to_numpy(dtype=np.int64)
    ids = d["id"].to_numpy()
    index = pd.Series(np.arange(len(d)), index=ids)
    first = d["parent"].map(index).to_numpy(dtype=float)  # row of the first parent, NaN for roots
    order = np.argsort(gen, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(gen[order]) != 0, True])
    y = np.zeros(len(d))
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[a:b]
        key = np.where(np.isnan(first[rows]), -1.0, y[np.nan_to_num(first[rows], nan=0).astype(np.int64)])
        ranked = rows[np.argsort(key, kind="stable")]
        y[ranked] = (np.arange(len(rows)) + 0.5) / len(rows)
    return gen.astype(float), y


def lineage_tree(df: pd.DataFrame, run: str | None = None) -> Figure:
    """Parent -> child edges (crossover's second parents dashed), nodes coloured by val_bpb."""
    d = one_run(df, run).sort_values("created", kind="stable")
    fig, ax = _figure(12.0, 7.0)
    if d.empty:
        ax.text(0.5, 0.5, "no individuals yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    x, y = tree_layout(d)
    index = pd.Series(np.arange(len(d)), index=d["id"].to_numpy())
    edges = d[["id", "parents"]].explode("parents").dropna(subset=["parents"])
    child = edges["id"].map(index).to_numpy()
    parent = edges["parents"].map(index).to_numpy(dtype=float)
    second = edges.groupby(level=0).cumcount().to_numpy() > 0  # a crossover's other parents
    ok = ~np.isnan(parent)
    child, parent, second = child[ok], parent[ok].astype(np.int64), second[ok]
    segs = np.stack([np.c_[x[parent], y[parent]], np.c_[x[child], y[child]]], axis=1)
    big = len(d) > 2000
    lw = 0.8 if not big else 0.15
    ax.add_collection(
        LineCollection(segs[~second], colors="#9a9a9a", linewidths=lw, rasterized=big, zorder=1)
    )
    if second.any():
        ax.add_collection(
            LineCollection(
                segs[second], colors="#e07b00", linewidths=lw * 1.4, linestyles=(0, (3, 2)),
                rasterized=big, zorder=1, label="crossover: second parent",
            )
        )  # fmt: skip
    score = d["val_bpb_mean"].to_numpy(dtype=float)
    scored = ~np.isnan(score)
    size = 36 if not big else 3
    if scored.any():
        vmin, vmax = np.nanmin(score), np.nanquantile(score, 0.9)
        pts = ax.scatter(
            x[scored], y[scored], c=score[scored], cmap="viridis_r", vmin=vmin, vmax=max(vmax, vmin + 1e-9),
            s=size, edgecolors="black" if not big else "none", linewidths=0.3, rasterized=big, zorder=3,
        )  # fmt: skip
        fig.colorbar(pts, ax=ax, label="val_bpb (mean over seeds)")
    failed = ~scored & d["status"].isin(["failed", "rejected"]).to_numpy()
    other = ~scored & ~failed
    if failed.any():
        ax.scatter(
            x[failed],
            y[failed],
            marker="x",
            c="#d62728",
            s=size,
            rasterized=big,
            zorder=2,
            label="failed / rejected",
        )
    if other.any():
        ax.scatter(
            x[other],
            y[other],
            marker="o",
            facecolors="none",
            edgecolors="#808080",
            s=size,
            zorder=2,
            label="not scored",
        )
    # The champion's line of descent, and ids on it (bounded).
    board = leaderboard(d, 1)
    if len(board):
        chain = first_parent_chain(d, board["id"].iloc[0])
        rows = chain["id"].map(index).to_numpy()
        ax.plot(x[rows], y[rows], c="#d62728", lw=2.0 if not big else 0.7, alpha=0.8, zorder=4,
                label=f"champion {board['id'].iloc[0]}")  # fmt: skip
        step = max(1, len(rows) // (MAX_LABELS if not big else 10))
        # A small tree gets every id; a big one only ids along the champion's line.
        for r in range(len(d)) if len(d) <= 2 * MAX_LABELS else rows[::step]:
            ax.annotate(
                d["id"].iloc[r], (x[r], y[r]), xytext=(3, 4), textcoords="offset points", fontsize=7, zorder=5
            )
    ax.set_xlim(-0.5, x.max() + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.02, 1.02)
    ax.set_yticks([])
    ax.set_xlabel("generation")
    n_cross = int((d["parents"].map(len) > 1).sum())
    ax.set_title(_title(d, f"Lineage: {len(d)} individuals, {n_cross} crossovers"))
    ax.legend(loc="upper left", fontsize=8)
    return fig


def transfer(df: pd.DataFrame, run: str | None = None) -> Figure:
    """Improvement over the baseline at the search depth against the validation depth."""
    d = one_run(df, run)
    v = d[d["validation_delta_baseline"].notna() & d["delta_baseline"].notna() & (d["parents"].map(len) > 0)]
    fig, ax = _figure(8.0, 6.5)
    if v.empty:
        ax.set_axis_off()
        ax.text(
            0.5, 0.5,
            "No validation yet.\n\nRun `evolve validate --depth 24 --top 5` to re-run the best individuals\n"
            "and the baseline at depth 24; this plot then shows whether their gains transfer.",
            ha="center", va="center", fontsize=12, transform=ax.transAxes,
        )  # fmt: skip
        ax.set_title(_title(d, "Transfer"))
        return fig
    gx = -v["delta_baseline"].to_numpy(dtype=float)
    gy = -v["validation_delta_baseline"].to_numpy(dtype=float)
    for verdict, colour in _VERDICT_COLOURS.items():
        m = (v["verdict"] == verdict).to_numpy()
        if m.any():
            ax.scatter(gx[m], gy[m], c=colour, s=40, edgecolors="black", lw=0.4, label=verdict, zorder=3)
    rest = ~v["verdict"].isin(list(_VERDICT_COLOURS)).to_numpy()
    if rest.any():
        ax.scatter(gx[rest], gy[rest], c="#808080", s=40, label="no verdict", zorder=3)
    for i, ind in enumerate(v["id"].to_numpy()[: MAX_LABELS * 2]):
        ax.annotate(ind, (gx[i], gy[i]), xytext=(3, 3), textcoords="offset points", fontsize=7)
    lim = max(np.abs(np.r_[gx, gy]).max() * 1.15, 1e-4)
    ax.plot([-lim, lim], [-lim, lim], ls="--", c="#808080", lw=1, label="same gain at both depths")
    floor = (v.attrs.get("validation_noise_floor") or {}).get(v["run"].iloc[0])
    if floor is not None and np.isfinite(floor):
        ax.axhspan(-2 * floor, 2 * floor, color="#f0a30a", alpha=0.12, label="within 2 noise floors")
    ax.axhline(0, c="black", lw=0.6)
    ax.axvline(0, c="black", lw=0.6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    vdepth = int(v["validation_depth"].iloc[0])
    sdepth = int(v["depth"].iloc[0]) if v["depth"].notna().any() else "search"
    ax.set_xlabel(f"gain over baseline at depth {sdepth} (val_bpb, higher is better)")
    ax.set_ylabel(f"gain over baseline at depth {vdepth}")
    # Spearman = Pearson on ranks (pandas' method="spearman" would need scipy).
    rho = pd.Series(gx).rank().corr(pd.Series(gy).rank()) if len(v) > 2 else float("nan")
    ax.set_title(
        f"Transfer to depth {vdepth}: {len(v)} validated"
        + (f", Spearman ρ = {rho:.2f}" if np.isfinite(rho) else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


PLOTS = {"progress": progress, "lineage_tree": lineage_tree, "transfer": transfer}
