"""pandas views of a run: one row per individual (`lineage`), one per training run (`evaluations`).

Flat columns in the style of optuna's `trials_dataframe()`. The store is opened read-only
(`mode=ro`) and each view is read inside one read transaction, which in WAL mode is a consistent
snapshot: safe beside a live `evolve run`, and never a write. Every table is read with one query
and joined in pandas, so 100,000 individuals take well under two seconds.

Scores are means over the ok evaluations at the run's search depth; validation runs (purpose
`validation`, at another depth) fill the `validation_*` columns and the transfer `verdict`.

Every run of the workspace is in one frame (the `run` column); ids are unique across runs. A
run started from an exported champion has, in its baseline's `origin` column, the earlier run's
individual it came from: `ancestry` and `descendants` follow that link, so the champion of the
third run traces back to the first run's baseline.

The rules are evolve's own, called on the frame's data, never re-derived here: the noise model
(`evolve.judging.model_from_runs`, the `noise_floor` attribute), the bound elites are ranked by
(`evolve.promotion.pessimistic`, the `bound` column), the transfer verdict (`evolve.champion.
verdict`) and the champion (`evolve.champion.pick_champion`, `champion()`). `analysis` imports
those pure functions; `evolve` never imports `analysis`.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from evolve.champion import Candidate, pick_champion, verdict
from evolve.judging import NoiseKey, RunFact, main_key, model_for_key, model_from_runs
from evolve.promotion import NoiseModel, Score, pessimistic, pessimistic_many, pooled_std

from .columns import LINEAGE_COLUMNS
from .errors import AnalysisError

STATE_DIR = ".evolve"
DB_NAME = "evolve.db"
VERDICTS = ("transfers", "does not transfer", "inconclusive")

_TIMES = ("created", "started", "finished")


@dataclass(frozen=True)
class Source:
    """Where a run's state lives: the store (None when there is none) and the git workspace."""

    db: Path | None
    root: Path | None  # the workspace's git repository, for diffs and the no-store fallback


def locate(path: str | Path) -> Source:
    """A workspace directory (or any folder inside one), or the path of an `evolve.db`."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        root = p.parent.parent if p.parent.name == STATE_DIR else None
        return Source(p, root if root is not None and (root / ".git").exists() else None)
    if not p.is_dir():
        raise AnalysisError(f"{p} does not exist; pass a workspace directory or its .evolve/evolve.db")
    for folder in (p, *p.parents):
        if (folder / STATE_DIR / DB_NAME).is_file():
            return Source(folder / STATE_DIR / DB_NAME, folder if (folder / ".git").exists() else None)
        if (folder / ".git").exists():
            return Source(None, folder)
    raise AnalysisError(
        f"{p} is not a workspace (no .evolve/evolve.db, no git repository); run `evolve init`"
    )


@contextmanager
def read_snapshot(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection holding one read transaction: every query sees the same state."""
    from evolve.migrations import MIGRATIONS, applied_versions
    from evolve.storefile import connect_readonly

    try:
        conn = connect_readonly(db, isolation_level=None)  # also in a read-only workspace
    except sqlite3.OperationalError as exc:
        raise AnalysisError(f"cannot read {db} ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise AnalysisError(f"{db} is not an autoevolve store ({exc})") from None
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA query_only=ON")  # a second lock on top of mode=ro
        try:
            found = applied_versions(conn)
        except sqlite3.DatabaseError as exc:
            raise AnalysisError(f"{db} is not an autoevolve store ({exc})") from None
        known = max(m.version for m in MIGRATIONS)
        if not found:
            raise AnalysisError(
                f"{db} is not an autoevolve store (no schema); pass a workspace's .evolve/evolve.db"
            )
        if max(found) > known:
            raise AnalysisError(
                f"{db} has schema version {max(found)}, newer than this autoevolve: upgrade it"
            )
        conn.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _read(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> pd.DataFrame:
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return pd.DataFrame.from_records(cur.fetchall(), columns=names)


def _runs(conn: sqlite3.Connection, run: str | None) -> pd.DataFrame:
    runs = _read(conn, "SELECT name, settings, profile, strategy, created FROM runs ORDER BY created, name")
    if run is not None and run not in set(runs["name"]):
        known = ", ".join(runs["name"]) or "none yet"
        raise AnalysisError(f"no run {run!r} in this store (runs: {known})")
    return runs if run is None else runs[runs["name"] == run]


def _times(df: pd.DataFrame) -> None:
    for col in _TIMES:
        if col in df:
            df[col] = pd.to_datetime(df[col].astype("float64"), unit="s", utc=True)


def _scores(pos: np.ndarray, values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample std (0 for one seed, as promotion's Score says) and count per row position."""
    n = np.bincount(pos, minlength=n_rows).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(pos, weights=values, minlength=n_rows) / n
        sq = np.bincount(pos, weights=(values - mean[pos]) ** 2, minlength=n_rows)  # two passes: exact
        std = np.where(n > 1, np.sqrt(sq / np.maximum(n - 1, 1)), np.where(n == 1, 0.0, np.nan))
    return mean, std, n


def _noise(
    df: pd.DataFrame,
    evs: pd.DataFrame,
    epos: np.ndarray,
    m: np.ndarray,
    run_code: np.ndarray,
    n_runs: int,
    mean: np.ndarray,
    std: np.ndarray,
    n: np.ndarray,
    alphas: list[float],
) -> tuple[list[NoiseModel | None], np.ndarray]:
    """Per run, evolve's noise model at the run's main key; per row, the bound it is ranked by."""
    ids = df["id"].to_numpy(dtype=object)
    accepted_row = (df["decision"] == "accept").to_numpy()
    sel = np.flatnonzero(m)
    rows = epos[sel]
    keys = pd.DataFrame({
        "profile": evs["profile"].to_numpy(dtype=object)[sel], "depth": evs["depth"].to_numpy(dtype=np.int64)[sel],
        "budget": np.round(evs["budget"].to_numpy(dtype=float)[sel], 6),
        "kind": pd.Series(evs["gpu_name"].to_numpy(dtype=object)[sel]).fillna("").replace("", "cpu").to_numpy(),
    })  # fmt: skip
    key_code, uniques = pd.factorize(pd.MultiIndex.from_frame(keys)) if len(keys) else (np.zeros(0, int), [])
    key_list = [NoiseKey(str(p), int(d), float(b), str(k)) for p, d, b, k in uniques]
    seed = evs["seed"].to_numpy(dtype=np.int64)[sel]
    ok = evs["ok"].to_numpy(dtype=bool)[sel]
    bpb = evs["val_bpb"].to_numpy(dtype=float)[sel]
    erun = run_code[rows]

    def facts(where: np.ndarray) -> list[RunFact]:
        return [
            RunFact(
                ids[rows[i]], int(seed[i]), NoiseKey(*key_list[key_code[i]]), float(bpb[i]) if ok[i] else None
            )
            for i in np.flatnonzero(where)
        ]

    models: list[NoiseModel | None] = []
    bound = np.full(len(df), np.nan)
    for code in range(n_runs):
        members = np.flatnonzero(run_code == code)
        accepted = [ids[r] for r in members if accepted_row[r]]
        scored = members[n[members] > 0]
        in_run = erun == code
        if len(np.unique(key_code[in_run])) <= 1:
            # One key (the usual case): the model needs only the accepted individuals' runs, and
            # one model ranks every row. `model_from_runs` ignores the others anyway.
            mine = facts(in_run & accepted_row[rows])
            key = key_list[key_code[in_run][0]] if in_run.any() else None
            models.append(model_from_runs(mine, accepted, key) if key is not None else None)
            if models[-1] is not None:
                bound[scored] = pessimistic_many(mean[scored], n[scored], models[-1], alphas[code])
            continue
        everything = facts(in_run)
        models.append(model_from_runs(everything, accepted, main_key(everything)))
        by_ind: dict[str, list[RunFact]] = {}
        for f in everything:
            by_ind.setdefault(f.individual, []).append(f)
        cache: dict = {}
        for r in scored:
            if ids[r] not in by_ind:
                continue
            k = main_key(by_ind[ids[r]])
            if k not in cache:
                cache[k] = model_for_key(everything, accepted, k)[0]
            bound[r] = pessimistic(Score(float(mean[r]), float(std[r]), int(n[r])), cache[k], alphas[code])
    return models, bound


def _confirmations(conn: sqlite3.Connection, df: pd.DataFrame) -> None:
    """The fresh-seed confirmations evolve recorded (migration 10), per individual at its run's depth."""
    cols = ("confirmation", "confirmed_bpb_mean", "confirmed_bpb_n", "confirmed_seeds")
    df["confirmation"], df["confirmed_bpb_mean"] = None, np.nan
    df["confirmed_bpb_n"], df["confirmed_seeds"] = 0, None
    if "confirmations" not in {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }:
        return
    rows = _read(conn, "SELECT individual, depth, status, mean, n, first_seed, seeds FROM confirmations")
    if rows.empty:
        return
    rows = rows.merge(df[["id", "depth"]].astype({"depth": "float64"}), left_on=["individual", "depth"],
                      right_on=["id", "depth"])  # fmt: skip
    at = df.reset_index().set_index("id")["index"]
    for r in rows.itertuples():
        i = at[r.individual]
        last = r.first_seed + r.seeds - 1
        df.loc[i, list(cols)] = [r.status, r.mean if r.mean is not None else np.nan, int(r.n),
                                 f"{r.first_seed}-{last}" if r.seeds > 1 else str(r.first_seed)]  # fmt: skip


def lineage(path: str | Path = ".", run: str | None = None) -> pd.DataFrame:
    """One row per individual of every run (or of `run`), in the order they were created.

    `path` is a workspace (or a folder in it) or an `evolve.db`. Without a store, the rows are
    rebuilt from git alone (ids, commits, parents, operators, descriptions; no scores)."""
    src = locate(path)
    if src.db is None:
        from .gitlineage import lineage_from_git

        assert src.root is not None
        return lineage_from_git(src.root, run)
    with read_snapshot(src.db) as conn:
        df = _lineage(conn, run)
    df.attrs.update(source="store", db=str(src.db), root=str(src.root) if src.root else None)
    return df


def _lineage(conn: sqlite3.Connection, run: str | None) -> pd.DataFrame:
    # Rows are joined on SQLite's integer rowids mapped to row positions, not on id strings:
    # at 100,000 individuals, string joins in pandas would cost more than the whole budget.
    runs = _runs(conn, run)
    where, params = ("WHERE i.run = ?", (run,)) if run is not None else ("", ())
    origin = "origin" if "origin" in _columns(conn, "individuals") else "NULL AS origin"  # older stores
    df = _read(
        conn,
        'SELECT i.rowid AS _rowid, id, run, commit_sha AS "commit", branch, operator, island, generation,'
        f" status, decision, created, started, finished, description, guard_reason, {origin}"
        f" FROM individuals i {where} ORDER BY created, i.rowid",
        params,
    )
    n_rows = len(df)
    rowids = df.pop("_rowid").to_numpy(dtype=np.int64)
    lookup = np.full(int(rowids.max(initial=0)) + 1, -1, dtype=np.int64)
    lookup[rowids] = np.arange(n_rows)

    def positions(col: pd.Series) -> np.ndarray:
        r = col.fillna(-1).to_numpy(dtype=np.int64)
        inside = (r >= 0) & (r < len(lookup))
        return np.where(inside, lookup[np.clip(r, 0, len(lookup) - 1)], -1)

    edges = _read(
        conn,
        "SELECT c.rowid AS c, p.rowid AS p, l.parent AS parent, l.kind AS kind FROM lineage l"
        " JOIN individuals c ON c.id = l.child LEFT JOIN individuals p ON p.id = l.parent ORDER BY l.rowid",
    )
    cpos = positions(edges["c"])
    keep = cpos >= 0
    edges, cpos, ppos = edges[keep], cpos[keep], positions(edges["p"])[keep]
    evs = _read(
        conn,
        "SELECT i.rowid AS r, e.depth AS depth, e.purpose = 'validation' AS validation,"
        " (e.status = 'ok' AND e.val_bpb IS NOT NULL) AS ok, e.val_bpb AS val_bpb, e.seed AS seed,"
        " e.profile AS profile, e.budget AS budget, e.gpu_name AS gpu_name,"
        " COALESCE(e.wall_seconds, 0) * (LENGTH(e.device) - LENGTH(REPLACE(e.device, ',', '')) + 1) AS gpu"
        " FROM evaluations e JOIN individuals i ON i.id = e.individual ORDER BY e.id",
    )
    epos = positions(evs["r"])
    evs, epos = evs[epos >= 0], epos[epos >= 0]
    run_code, run_names = pd.factorize(df["run"])
    n_runs = len(run_names)

    # Parents in merge order (first, second), as the lineage edges were recorded.
    order = np.argsort(cpos, kind="stable")
    counts = np.bincount(cpos, minlength=n_rows)
    flat = iter(edges["parent"].to_numpy(dtype=object)[order])
    df["parents"] = pd.Series([tuple(islice(flat, c)) for c in counts], index=df.index, dtype=object)
    _, first = np.unique(cpos, return_index=True)
    parent = np.full(n_rows, None, dtype=object)
    kind = np.full(n_rows, None, dtype=object)
    parent[cpos[first]] = edges["parent"].to_numpy(dtype=object)[first]
    kind[cpos[first]] = edges["kind"].to_numpy(dtype=object)[first]
    df["parent"], df["kind"] = parent, kind

    # The search depth of a run: the depth most of its search runs used, else its settings' depth.
    ok = evs["ok"].to_numpy(dtype=bool)
    val = evs["validation"].to_numpy(dtype=bool)
    depth = evs["depth"].to_numpy(dtype=np.int64)
    bpb = evs["val_bpb"].to_numpy(dtype=float)
    erun = run_code[epos]
    settings = {r.name: json.loads(r.settings or "{}") for r in runs.itertuples()}
    search_depth = np.full(n_runs, -1, dtype=np.int64)
    modes = pd.DataFrame({"run": erun[ok & ~val], "depth": depth[ok & ~val]}).value_counts()
    for (code, d), _ in modes[::-1].items():  # most common last, so it wins
        search_depth[code] = d
    for code, name in enumerate(run_names):
        if search_depth[code] < 0 and isinstance(settings.get(name, {}).get("depth"), int):
            search_depth[code] = settings[name]["depth"]
    searched = ~val & (depth == search_depth[erun])
    m = ok & searched
    mean, std, n = _scores(epos[m], bpb[m], n_rows)
    df["depth"] = pd.array(np.where(search_depth[run_code] >= 0, search_depth[run_code], None), dtype="Int64")
    df["val_bpb_mean"], df["val_bpb_std"], df["val_bpb_n"] = mean, std, n
    alphas = [float(settings.get(name, {}).get("alpha", 0.05)) for name in run_names]
    models, df["bound"] = _noise(df, evs, epos, searched, run_code, n_runs, mean, std, n, alphas)
    _confirmations(conn, df)

    # Delta vs parent: against the best-scoring parent (a crossover must beat both to improve).
    best_parent = np.full(n_rows, np.nan)
    np.fmin.at(best_parent, cpos, np.where(ppos >= 0, mean[np.maximum(ppos, 0)], np.nan))
    df["delta_parent"] = mean - best_parent
    base = _baselines(df, counts, run_code, n_runs)
    base_mean = np.where(base >= 0, mean[np.maximum(base, 0)], np.nan)
    df["delta_baseline"] = mean - base_mean[run_code]

    # Validation: evaluations with purpose `validation` at the deepest depth validated in the run.
    vdepth = np.full(n_runs, -1, dtype=np.int64)
    np.maximum.at(vdepth, erun[ok & val], depth[ok & val])
    m = ok & val & (depth == vdepth[erun])
    vmean, vstd, vn = _scores(epos[m], bpb[m], n_rows)
    df["validation_depth"] = pd.array(np.where(vdepth[run_code] >= 0, vdepth[run_code], None), dtype="Int64")
    df["validation_bpb_mean"], df["validation_bpb_n"] = vmean, vn
    vbase = np.where(base >= 0, vmean[np.maximum(base, 0)], np.nan)
    df["validation_delta_baseline"] = vmean - vbase[run_code]
    vgroups: list[dict[int, list[float]]] = [{} for _ in range(n_runs)]
    for r, v in zip(epos[m], bpb[m], strict=True):
        vgroups[run_code[r]].setdefault(int(r), []).append(float(v))
    vfloors = np.array([pooled_std(g.values()) if vdepth[c] >= 0 else None for c, g in enumerate(vgroups)],
                       dtype=float)  # fmt: skip
    gain = -df["validation_delta_baseline"].to_numpy()
    floor = vfloors[run_code]
    is_base = np.zeros(n_rows, dtype=bool)
    is_base[base[base >= 0]] = True
    verdicts = np.full(n_rows, None, dtype=object)
    for i in np.flatnonzero(~np.isnan(gain) & ~is_base):  # the validated rows only: evolve's rule
        verdicts[i] = verdict(float(gain[i]), None if np.isnan(floor[i]) else float(floor[i])).value
    df["verdict"] = pd.Series(verdicts, index=df.index, dtype=object)
    _stored_verdicts(conn, df)

    # Cost: device-seconds of every evaluation (a multi-GPU run counts each device), LLM usage.
    df["evaluations"] = np.bincount(epos, minlength=n_rows)
    df["failures"] = np.bincount(epos, weights=~ok, minlength=n_rows).astype(np.int64)
    df["gpu_seconds"] = np.bincount(epos, weights=evs["gpu"].to_numpy(dtype=float), minlength=n_rows)
    _llm_usage(conn, df, positions)
    _times(df)
    df = df[list(LINEAGE_COLUMNS)].reset_index(drop=True)
    df.attrs.update(
        search_depth={name: int(search_depth[c]) for c, name in enumerate(run_names) if search_depth[c] >= 0},
        noise_floor={
            name: float(models[c].sigma)
            if models[c] is not None and models[c].sigma is not None
            else math.nan
            for c, name in enumerate(run_names)
        },
        validation_noise_floor={
            name: float(vfloors[c]) for c, name in enumerate(run_names) if vdepth[c] >= 0
        },
        runs={
            r.name: {"profile": r.profile, "strategy": r.strategy, **settings[r.name]}
            for r in runs.itertuples()
        },
    )
    return df


def _baselines(df: pd.DataFrame, n_parents: np.ndarray, run_code: np.ndarray, n_runs: int) -> np.ndarray:
    """Per run, the row of its generation 0 (the root named `baseline` when there are several); -1 if none."""
    out = np.full(n_runs, -1, dtype=np.int64)
    roots = np.flatnonzero(n_parents == 0)
    named = (df["operator"].to_numpy(dtype=object)[roots] == "baseline").astype(int)
    for row in roots[np.lexsort((roots, -named))][::-1]:  # the preferred one is written last
        out[run_code[row]] = row
    return out


def _stored_verdicts(conn: sqlite3.Connection, df: pd.DataFrame) -> None:
    """A verdict that validation recorded in the store wins over the one computed here."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    for table in tables:
        if {"individual", "verdict"} <= _columns(conn, table):
            stored = _read(conn, f"SELECT individual, verdict FROM {table} WHERE verdict IS NOT NULL")
            last = stored.drop_duplicates("individual", keep="last").set_index("individual")["verdict"]
            df["verdict"] = df["id"].map(last).where(df["id"].isin(last.index), df["verdict"])


def _llm_usage(conn: sqlite3.Connection, df: pd.DataFrame, positions) -> None:
    """Tokens and cost per individual, when LLM calls name the individual they proposed."""
    cols = ("llm_prompt_tokens", "llm_completion_tokens", "llm_tokens", "llm_cost")
    if "individual" not in _columns(conn, "llm_calls"):
        for col in cols:
            df[col] = np.nan
        return
    calls = _read(
        conn,
        "SELECT i.rowid AS r, c.prompt_tokens AS p, c.completion_tokens AS c, c.cost AS cost"
        " FROM llm_calls c JOIN individuals i ON i.id = c.individual",
    )
    pos = positions(calls["r"])
    calls, pos = calls[pos >= 0], pos[pos >= 0]
    n_rows = len(df)
    has = np.bincount(pos, minlength=n_rows) > 0
    for col, src in (("llm_prompt_tokens", "p"), ("llm_completion_tokens", "c"), ("llm_cost", "cost")):
        total = np.bincount(pos, weights=calls[src].to_numpy(dtype=float), minlength=n_rows)
        df[col] = np.where(has, total, np.nan)
    df["llm_tokens"] = df["llm_prompt_tokens"] + df["llm_completion_tokens"]


def evaluations(path: str | Path = ".", run: str | None = None) -> pd.DataFrame:
    """One row per training run, with its individual's run/operator/island and `metrics_*` columns."""
    src = locate(path)
    if src.db is None:
        raise AnalysisError(
            f"no store in {src.root}: evaluations live in .evolve/evolve.db; run `evolve run` first"
        )
    with read_snapshot(src.db) as conn:
        _runs(conn, run)
        where, params = ("WHERE i.run = ?", (run,)) if run is not None else ("", ())
        df = _read(
            conn,
            "SELECT e.id, e.individual, i.run, i.operator, i.island, i.generation, e.purpose, e.depth, e.budget,"
            " e.seed, e.profile, e.status, e.val_bpb, e.wall_seconds, e.training_seconds, e.device, e.gpu_name,"
            " e.torch_version, e.data_fingerprint, e.created, e.reason, e.error_tail, e.log_path, e.metrics"
            f" FROM evaluations e JOIN individuals i ON i.id = e.individual {where} ORDER BY e.id",
            params,
        )
    metrics = pd.DataFrame.from_records([json.loads(m) for m in df.pop("metrics")], index=df.index)
    metrics = metrics.drop(columns=[c for c in metrics if c in ("val_bpb", "depth")])
    df = pd.concat([df, metrics.add_prefix("metrics_")], axis=1)
    _times(df)
    df.attrs.update(source="store", db=str(src.db), root=str(src.root) if src.root else None)
    return df


# --- queries on a lineage frame ---


def _row_of(df: pd.DataFrame, individual: str) -> int:
    hits = np.flatnonzero(df["id"].to_numpy() == individual)
    if not len(hits):
        raise AnalysisError(f"no individual {individual!r} in this lineage (ids look like g0012)")
    return int(hits[0])


def _order(df: pd.DataFrame, keep: set[str]) -> pd.DataFrame:
    """The rows of `keep`, run by run (in the order the runs started), oldest generation first."""
    run_rank = {name: rank for rank, name in enumerate(dict.fromkeys(df["run"]))}
    out = df[df["id"].isin(keep)]
    out = out.assign(_run=out["run"].map(run_rank)).sort_values(
        ["_run", "generation", "created", "id"], kind="stable"
    )
    return out.drop(columns="_run")


def _links(df: pd.DataFrame) -> pd.Series:
    """Per row, the ids it descends from: its parents, and for a run's baseline its `origin`."""
    if "origin" not in df:
        return df["parents"]
    origins = df["origin"].to_numpy(dtype=object)
    return pd.Series(
        [(*p, o) if isinstance(o, str) and o else p for p, o in zip(df["parents"], origins, strict=True)],
        index=df.index,
        dtype=object,
    )


def ancestry(df: pd.DataFrame, individual: str, include_self: bool = True) -> pd.DataFrame:
    """Every ancestor of `individual` (through both parents of a crossover, and back across runs
    through a baseline's `origin`), run by run, oldest generation first."""
    _row_of(df, individual)
    parents = dict(zip(df["id"], _links(df), strict=True))
    seen: set[str] = set()
    todo = [individual]
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    if include_self:
        seen.add(individual)
    return _order(df, seen)


def descendants(df: pd.DataFrame, individual: str, include_self: bool = False) -> pd.DataFrame:
    """Every descendant of `individual` (children, their children, ..., and the later runs that
    started from one of them), run by run, oldest generation first."""
    _row_of(df, individual)
    edges = (
        pd.DataFrame({"id": df["id"], "parents": _links(df)}).explode("parents").dropna(subset=["parents"])
    )
    edges = edges.sort_values("parents", kind="stable")
    parent_keys = edges["parents"].to_numpy().astype(str)
    child_ids = edges["id"].to_numpy()
    seen: set[str] = set()
    frontier = np.array([individual])
    while len(frontier):
        # One vectorised step per generation of the subtree: the children of the whole frontier.
        lo = np.searchsorted(parent_keys, frontier, side="left")
        hi = np.searchsorted(parent_keys, frontier, side="right")
        kids = (
            np.concatenate([child_ids[a:b] for a, b in zip(lo, hi, strict=True)]) if len(lo) else np.array([])
        )
        new = [k for k in dict.fromkeys(kids) if k not in seen]
        seen.update(new)
        frontier = np.array(new, dtype=str)
    if include_self:
        seen.add(individual)
    return _order(df, seen)


def first_parent_chain(df: pd.DataFrame, individual: str) -> pd.DataFrame:
    """The path from generation 0 to `individual` through first parents, as `git log --first-parent`."""
    _row_of(df, individual)
    first = dict(zip(df["id"], df["parents"], strict=True))
    chain = [individual]
    while first.get(chain[-1]):
        chain.append(first[chain[-1]][0])
        if chain[-1] in chain[:-1]:
            break  # a cycle can't come from git, but don't hang on a hand-edited store
    position = {ind: i for i, ind in enumerate(reversed(chain))}
    out = df[df["id"].isin(position)]
    return out.iloc[np.argsort(out["id"].map(position).to_numpy())]


def one_run(df: pd.DataFrame, run: str | None = None) -> pd.DataFrame:
    """The rows of `run`; by default of the run that created the newest individual."""
    if df.empty:
        return df
    if run is None:
        run = df.loc[df["created"].idxmax(), "run"] if df["created"].notna().any() else df["run"].iloc[-1]
    out = df[df["run"] == run]
    if out.empty:
        raise AnalysisError(f"no run {run!r} here (runs: {', '.join(map(str, df['run'].unique()))})")
    out = out.copy()
    out.attrs = dict(df.attrs)
    return out


def leaderboard(df: pd.DataFrame, top: int | None = 10) -> pd.DataFrame:
    """Scored individuals, best mean val_bpb first (ties: more seeds first)."""
    scored = df[df["val_bpb_mean"].notna()]
    ranked = scored.sort_values(
        ["val_bpb_mean", "val_bpb_n", "id"], ascending=[True, False, True], kind="stable"
    )
    return ranked if top is None else ranked.head(top)


def champion(df: pd.DataFrame) -> pd.Series | None:
    """The champion of one run, by evolve's own rule (`evolve.champion.pick_champion`, what
    `evolve export champion` ships): the transferring individual with the best mean at the
    validation depth; else the elite confirmed on fresh seeds with the best fresh-seed mean; else
    the best accepted child by its bound not shown to fail deeper (the baseline last)."""
    scored = df[df["val_bpb_mean"].notna()]
    if scored.empty:
        return None
    col = lambda name, default=None: (
        scored[name] if name in scored else pd.Series(default, index=scored.index)
    )
    nan = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    cands = [
        Candidate(
            id=str(r.id), baseline=len(r.parents) == 0, accepted=r.decision == "accept",
            mean=float(r.val_bpb_mean), bound=nan(b), confirmation=nan(c), fresh_mean=nan(fm),
            fresh_n=int(nan(fn) or 0), fresh_seeds=str(nan(fs) or ""), verdict=nan(r.verdict),
            validation_mean=nan(vm), validation_depth=nan(vd),
        )
        for r, b, c, fm, fn, fs, vm, vd in zip(
            scored.itertuples(), col("bound"), col("confirmation"), col("confirmed_bpb_mean"),
            col("confirmed_bpb_n", 0), col("confirmed_seeds"), col("validation_bpb_mean"),
            col("validation_depth"), strict=True,
        )
    ]  # fmt: skip
    depth = col("depth").dropna()
    picked = pick_champion(cands, int(depth.iloc[0]) if len(depth) else 0)
    if picked is None:
        return None
    return df.loc[df["id"] == picked.id].iloc[0]


def operator_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per operator: children, evaluated, failed, improvements over the parent, rates and costs."""
    kids = df[df["parents"].map(len) > 0]
    g = kids.assign(
        evaluated=kids["val_bpb_mean"].notna(),
        failed=kids["status"] == "failed",
        rejected=kids["status"] == "rejected",
        improved=kids["delta_parent"] < 0,
        accepted=kids["decision"] == "accept",
    ).groupby("operator", dropna=False)
    out = g.agg(
        children=("id", "size"),
        evaluated=("evaluated", "sum"),
        failed=("failed", "sum"),
        rejected=("rejected", "sum"),
        improvements=("improved", "sum"),
        accepted=("accepted", "sum"),
        best_delta=("delta_parent", "min"),
        mean_delta=("delta_parent", "mean"),
        best_val_bpb=("val_bpb_mean", "min"),
        gpu_seconds=("gpu_seconds", "sum"),
        llm_cost=("llm_cost", lambda s: s.sum(min_count=1)),
    )
    out["improvement_rate"] = out["improvements"] / out["evaluated"].where(out["evaluated"] > 0)
    out["gpu_seconds_per_improvement"] = out["gpu_seconds"] / out["improvements"].where(
        out["improvements"] > 0
    )
    out = out.sort_values(["improvement_rate", "children"], ascending=False, na_position="last")
    return out.reset_index()


def island_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run, island): size, evaluated, failures, improvements, best and mean score, deepest generation."""
    d = df.assign(
        evaluated=df["val_bpb_mean"].notna(),
        failed=df["status"] == "failed",
        improved=df["delta_parent"] < 0,
        accepted=df["decision"] == "accept",
    )
    g = d.groupby(["run", "island"])
    out = g.agg(
        individuals=("id", "size"),
        evaluated=("evaluated", "sum"),
        failed=("failed", "sum"),
        improvements=("improved", "sum"),
        accepted=("accepted", "sum"),
        best_val_bpb=("val_bpb_mean", "min"),
        mean_val_bpb=("val_bpb_mean", "mean"),
        max_generation=("generation", "max"),
    )
    scored = d[d["evaluated"]]
    best = scored.loc[scored.groupby(["run", "island"])["val_bpb_mean"].idxmin()]
    out["best_id"] = pd.Series(best["id"].to_numpy(), index=pd.MultiIndex.from_frame(best[["run", "island"]]))
    return out.reset_index()
