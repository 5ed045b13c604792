"""`evolve report`: one self-contained HTML page (or Markdown) about a run.

The page holds a summary, the three plots (PNG, embedded as base64 so the file can be mailed or
archived alone), the leaderboard, the operator and island tables, and the champion's line of
descent step by step with each step's `git diff` of the mutable files. The Markdown version
writes the PNGs into a folder beside it.
"""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genome.errors import GenomeError
from genome.repo import run_git

from . import plots
from .errors import AnalysisError
from .frames import (
    champion,
    first_parent_chain,
    island_stats,
    leaderboard,
    lineage,
    locate,
    one_run,
    operator_stats,
)

MAX_DIFF_LINES = 400  # per step: a rewrite of the whole file should not drown the page
FORMATS = ("html", "md")


@dataclass(frozen=True)
class Step:
    """One link of the champion's line of descent."""

    id: str
    operator: str
    description: str
    parents: tuple[str, ...]
    val_bpb: float
    delta_parent: float
    diff: str


@dataclass(frozen=True)
class Report:
    run: str
    generated: str
    summary: tuple[tuple[str, str], ...]
    leaderboard: pd.DataFrame
    operators: pd.DataFrame
    islands: pd.DataFrame
    champion: str | None
    champion_validated: bool
    steps: tuple[Step, ...]
    images: tuple[tuple[str, str, bytes], ...]  # (name, caption, png)


def _num(value: object, digits: int = 4, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def commit_diff(root: Path | None, parent: str, commit: str, paths: tuple[str, ...]) -> str:
    """`git diff parent commit -- paths` as text, cut at MAX_DIFF_LINES; a note instead when unavailable.

    Read-only: a diff of two commits touches neither the index nor the work tree, and
    GIT_OPTIONAL_LOCKS=0 keeps git from refreshing anything on the side."""
    if root is None:
        return "(no git repository next to the store: diff not available)"
    try:
        text = run_git(
            root, "diff", "--no-color", "--no-ext-diff", "--no-textconv", parent, commit, "--", *paths,
            env={"GIT_OPTIONAL_LOCKS": "0"},
        )  # fmt: skip
    except GenomeError as exc:
        return f"(diff not available: {exc})"
    lines = text.splitlines()
    if len(lines) > MAX_DIFF_LINES:
        more = len(lines) - MAX_DIFF_LINES
        lines = [*lines[:MAX_DIFF_LINES], f"... ({more} more lines: git diff {parent[:10]} {commit[:10]})"]
    return "\n".join(lines) or "(no change in the mutable files)"


def _summary(d: pd.DataFrame, champ: pd.Series | None) -> tuple[tuple[str, str], ...]:
    run = d["run"].iloc[0]
    info = (d.attrs.get("runs") or {}).get(run, {})
    status = d["status"].value_counts()
    base = d[d["parents"].map(len) == 0]["val_bpb_mean"].dropna()
    floor = (d.attrs.get("noise_floor") or {}).get(run)
    rows = [
        ("run", str(run)),
        ("profile / strategy", f"{info.get('profile', '?')} / {info.get('strategy', '?')}"),
        ("search depth", _num(d["depth"].dropna().iloc[0] if d["depth"].notna().any() else None)),
        ("individuals", str(len(d))),
        ("by status", ", ".join(f"{k} {v}" for k, v in status.items()) or "–"),
        ("evaluations (training runs)", str(int(d["evaluations"].sum()))),
        ("baseline val_bpb", _num(base.iloc[0] if len(base) else None, 6)),
        ("noise floor (seed-to-seed std)", _num(floor, 6)),
        ("device hours", f"{d['gpu_seconds'].sum() / 3600:.2f}"),
    ]
    if d["llm_cost"].notna().any():
        rows.append(("LLM tokens / cost", f"{int(d['llm_tokens'].sum()):,} / ${d['llm_cost'].sum():.2f}"))
    if champ is not None:
        validated = champ["verdict"] == "transfers"
        rows.append(
            (
                "champion",
                f"{champ['id']} val_bpb {_num(champ['val_bpb_mean'], 6)} (n={champ['val_bpb_n']}), "
                f"{_num(champ['delta_baseline'], 6, True)} vs baseline"
                + ("" if validated else " (not validated yet: `evolve validate`)"),
            )
        )
    if d["created"].notna().any():
        first, last = d["created"].min(), d[["created", "finished"]].max().max()
        rows.append(("time span", f"{first:%Y-%m-%d %H:%M} – {last:%Y-%m-%d %H:%M} UTC"))
    return tuple(rows)


def build_report(path: str | Path = ".", run: str | None = None, top: int = 10) -> Report:
    """Everything the report shows, computed once; render with `to_html` or `to_markdown`."""
    df = lineage(path)
    d = one_run(df, run)
    if d.empty:
        raise AnalysisError(f"nothing to report in {path}: the run has no individuals yet")
    src = locate(path)
    root = src.root
    name = str(d["run"].iloc[0])
    champ = champion(d)
    paths = tuple((d.attrs.get("runs") or {}).get(name, {}).get("mutable") or ("train.py",))
    steps = []
    if champ is not None:
        chain = first_parent_chain(d, champ["id"])
        commits = dict(zip(d["id"], d["commit"], strict=True))
        for row in chain.itertuples(index=False):
            parent = row.parents[0] if row.parents else None
            diff = commit_diff(root, commits[parent], row.commit, paths) if parent in commits else ""
            steps.append(
                Step(
                    row.id,
                    row.operator,
                    row.description,
                    tuple(row.parents),
                    row.val_bpb_mean,
                    row.delta_parent,
                    diff,
                )
            )
    images = tuple(
        (key, caption, plots.png_bytes(plots.PLOTS[key](d)))
        for key, caption in (
            ("progress", "Progress: every experiment, the running best, and the ideas that set a new best."),
            (
                "lineage_tree",
                "Family tree: parent → child, crossovers' second parents dashed, colour = val_bpb.",
            ),
            (
                "transfer",
                "Transfer: gain over the baseline at the search depth against the validation depth.",
            ),
        )
    )
    return Report(
        run=name,
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        summary=_summary(d, champ),
        leaderboard=leaderboard(d, top),
        operators=operator_stats(d),
        islands=island_stats(d),
        champion=None if champ is None else str(champ["id"]),
        champion_validated=champ is not None and champ["verdict"] == "transfers",
        steps=tuple(steps),
        images=images,
    )


# --- tables as strings, shared by both formats ---


def _board_rows(board: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = [
        "#",
        "id",
        "val_bpb",
        "± std",
        "n",
        "vs parent",
        "vs baseline",
        "operator",
        "island",
        "gen",
        "verdict",
        "description",
    ]
    rows = [
        [
            str(i), r.id, _num(r.val_bpb_mean, 6), _num(r.val_bpb_std, 6), _num(r.val_bpb_n),
            _num(r.delta_parent, 6, True), _num(r.delta_baseline, 6, True), r.operator, _num(r.island),
            _num(r.generation), _num(r.verdict), r.description,
        ]
        for i, r in enumerate(board.itertuples(index=False), start=1)
    ]  # fmt: skip
    return head, rows


def _operator_rows(ops: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = [
        "operator",
        "children",
        "evaluated",
        "failed",
        "rejected",
        "improved",
        "rate",
        "best Δ",
        "device h",
        "LLM $",
    ]
    rows = [
        [
            str(r.operator), _num(r.children), _num(r.evaluated), _num(r.failed), _num(r.rejected),
            _num(r.improvements), "–" if pd.isna(r.improvement_rate) else f"{r.improvement_rate:.0%}",
            _num(r.best_delta, 6, True), f"{r.gpu_seconds / 3600:.2f}", _num(r.llm_cost, 2),
        ]
        for r in ops.itertuples(index=False)
    ]  # fmt: skip
    return head, rows


def _island_rows(isl: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["island", "individuals", "evaluated", "failed", "improved", "best val_bpb", "best id", "max gen"]
    rows = [
        [
            _num(r.island), _num(r.individuals), _num(r.evaluated), _num(r.failed), _num(r.improvements),
            _num(r.best_val_bpb, 6), _num(r.best_id), _num(r.max_generation),
        ]
        for r in isl.itertuples(index=False)
    ]  # fmt: skip
    return head, rows


# --- HTML ---

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f8f8f8; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.add { color: #1a7f37; } .del { color: #cf222e; } .hunk { color: #8250df; }
.step { border-left: 3px solid #2a9d3f; padding-left: 1em; margin: 1em 0; }
"""


def _html_table(head: list[str], rows: list[list[str]], css: str = "") -> str:
    e = html.escape
    out = [
        f'<table class="{css}"><thead><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(out) + "</tbody></table>"


def _html_diff(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        cls = (
            "add" if line.startswith("+") and not line.startswith("+++")
            else "del" if line.startswith("-") and not line.startswith("---")
            else "hunk" if line.startswith("@@") else ""
        )  # fmt: skip
        text = html.escape(line)
        lines.append(f'<span class="{cls}">{text}</span>' if cls else text)
    return "<pre>" + "\n".join(lines) + "</pre>"


def to_html(report: Report) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>autoevolve report: {e(report.run)}</title><style>{_CSS}</style></head><body>",
        f"<h1>autoevolve report: run {e(report.run)}</h1>",
        f"<p>Generated {e(report.generated)} by <code>evolve report</code>.</p>",
        _html_table(["", ""], [list(kv) for kv in report.summary], "summary"),
        "<h2>Plots</h2>",
    ]
    for name, caption, png in report.images:
        data = base64.b64encode(png).decode()
        parts.append(
            f'<figure><img id="plot-{name}" alt="{e(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    parts += ["<h2>Leaderboard</h2>", _html_table(*_board_rows(report.leaderboard), "leaderboard")]
    parts += ["<h2>Operators</h2>", _html_table(*_operator_rows(report.operators), "operators")]
    parts += ["<h2>Islands</h2>", _html_table(*_island_rows(report.islands), "islands")]
    parts.append("<h2>The champion's line of descent</h2>")
    if report.champion is None:
        parts.append("<p>No individual has a score yet.</p>")
    else:
        note = "" if report.champion_validated else " (best at the search depth; not validated yet)"
        parts.append(
            f"<p>Champion <b>{e(report.champion)}</b>{e(note)}, from generation 0 through first parents:</p>"
        )
    for step in report.steps:
        also = f" (crossover with {', '.join(step.parents[1:])})" if len(step.parents) > 1 else ""
        parts.append(
            f'<div class="step"><h3>{e(step.id)} · {e(step.operator)}{e(also)}</h3>'
            f"<p>{e(step.description)}<br>val_bpb {_num(step.val_bpb, 6)}, "
            f"{_num(step.delta_parent, 6, True)} vs parent</p>"
            + (_html_diff(step.diff) if step.diff else "")
            + "</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


# --- Markdown ---


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(report: Report, image_dir: Path, relative_to: Path) -> str:
    """Markdown text; the PNGs are written into `image_dir` and linked relative to `relative_to`."""
    image_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# autoevolve report: run {report.run}",
        "",
        f"Generated {report.generated} by `evolve report`.",
        "",
    ]
    parts += [_md_table(["", ""], [list(kv) for kv in report.summary]), "", "## Plots", ""]
    for name, caption, png in report.images:
        file = image_dir / f"{name}.png"
        file.write_bytes(png)
        parts += [f"![{name}]({file.relative_to(relative_to).as_posix()})", "", f"*{caption}*", ""]
    parts += ["## Leaderboard", "", _md_table(*_board_rows(report.leaderboard)), ""]
    parts += ["## Operators", "", _md_table(*_operator_rows(report.operators)), ""]
    parts += ["## Islands", "", _md_table(*_island_rows(report.islands)), ""]
    parts += ["## The champion's line of descent", ""]
    if report.champion is None:
        parts.append("No individual has a score yet.")
    else:
        note = "" if report.champion_validated else " (best at the search depth; not validated yet)"
        parts += [f"Champion **{report.champion}**{note}, from generation 0 through first parents:", ""]
    for step in report.steps:
        also = f" (crossover with {', '.join(step.parents[1:])})" if len(step.parents) > 1 else ""
        parts += [
            f"### {step.id} · {step.operator}{also}",
            "",
            f"{step.description}  ",
            f"val_bpb {_num(step.val_bpb, 6)}, {_num(step.delta_parent, 6, True)} vs parent",
            "",
        ]
        if step.diff:
            parts += ["```diff", step.diff, "```", ""]
    return "\n".join(parts) + "\n"


def write_report(
    path: str | Path = ".",
    out: str | Path | None = None,
    fmt: str = "html",
    run: str | None = None,
    top: int = 10,
) -> Path:
    """Build the report of the workspace (or store) at `path` and write it; returns the file."""
    if fmt not in FORMATS:
        raise AnalysisError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    report = build_report(path, run, top)
    if out is None:
        src = locate(path)
        base = src.db.parent if src.db is not None else (src.root or Path(path)) / ".evolve"
        out = base / "report" / f"{report.run}.{fmt}"
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        out.write_text(to_html(report), encoding="utf-8")
    else:
        out.write_text(to_markdown(report, out.parent / f"{out.stem}_files", out.parent), encoding="utf-8")
    return out
