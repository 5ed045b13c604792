"""What the web view shows, as JSON-ready dicts read from one workspace's store and git repository.

Every read goes through the read paths that already exist: `analysis.frames.lineage` (one
read-only snapshot of the store), `evolve.live.snapshot` (what `evolve status` prints), the
transfer verdicts of `evolve.champion`, and `git diff`/`git cat-file` of commits the store names.
Connections are opened with `mode=ro` and `query_only`, so nothing here can write to the store;
git is only asked to read objects, never to touch the index, the work tree or a ref.

The frames are cached per run and thrown away when `state()` (a few aggregate queries that
change whenever the run writes) changes, so a page that refreshes every second re-reads the
store only when there is something new.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex

from evolve.champion import choose_champion, transfer_report, validated_depths
from evolve.live import snapshot
from evolve.scheduler import active_session
from evolve.store import Store
from genome.errors import GenomeError
from genome.repo import git_process
from genome.workspace import open_workspace

from .. import plots
from ..errors import AnalysisError
from ..frames import DB_NAME, champion, first_parent_chain, lineage, one_run, operator_stats, read_snapshot

RECENT_EVENTS = 40  # lines of the overview's event list
SNAPSHOT_TTL = 5.0  # seconds an overview snapshot of an unchanged store is reused (it walks the logs)
STATE_TTL = 0.5  # seconds a state() answer is shared between the pages asking for it
FRAME_STATE = ("individuals", "evaluations", "verdicts", "llm")  # what the lineage frame reads
_CMAP = colormaps["viridis_r"]  # the report's lineage tree colours, so both pictures agree


class NotFound(AnalysisError):
    """A run, individual, file or plot the request names does not exist (HTTP 404)."""


def jsonable(value: Any) -> Any:
    """numpy, pandas and dataclass values as plain JSON: NaN and NA become null, timestamps epoch seconds."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [jsonable(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.timestamp()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    return value


def inside(root: Path, path: str | Path) -> Path | None:
    """`path` (relative to `root`, or absolute) resolved, if it lies inside `root`; else None."""
    try:
        p = (root / path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return p if p.is_relative_to(root) else None


def safe_relative(path: str) -> str | None:
    """A plain relative POSIX path (no `..`, no absolute path, no backslash, no NUL), or None."""
    if not path or "\\" in path or "\x00" in path or path.startswith("/"):
        return None
    parts = path.split("/")  # by hand: PurePosixPath would quietly drop "." and empty parts
    if any(part in ("..", ".", "") for part in parts):
        return None
    return path


class WebView:
    """The read-only view of one workspace: its runs, and per run the pages' data."""

    def __init__(self, path: str | Path) -> None:
        try:
            self.ws = open_workspace(path)
        except GenomeError as exc:
            raise AnalysisError(str(exc)) from None
        self.root = self.ws.root.resolve()
        self.db = self.ws.state_dir / DB_NAME
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[tuple, Any]] = {}
        self._snapshots: dict[str, tuple[float, str, dict[str, Any]]] = {}
        self._state: tuple[float, dict[str, Any]] | None = None

    # --- the store's state: what changed since the page last looked ---------------------------

    def state(self) -> dict[str, Any]:
        """Counters that change whenever the store does, grouped by what they are about."""
        with self._lock:
            if self._state is not None and time.monotonic() - self._state[0] < STATE_TTL:
                return self._state[1]
        state = self._read_state()
        with self._lock:
            self._state = (time.monotonic(), state)
        return state

    def _read_state(self) -> dict[str, Any]:
        if not self.db.is_file():
            return {"store": False}
        try:
            with read_snapshot(self.db) as conn:
                one = lambda sql: list(conn.execute(sql).fetchone())
                state = {
                    "store": True,
                    "runs": one("SELECT COUNT(*), MAX(created) FROM runs"),
                    "individuals": one(
                        "SELECT COUNT(*), MAX(created), MAX(started), MAX(finished), TOTAL(status = 'running'),"
                        " TOTAL(decision = 'accept'), TOTAL(decision = 'reject') FROM individuals"
                    ),
                    "evaluations": one("SELECT COUNT(*), MAX(id) FROM evaluations"),
                    "events": one("SELECT MAX(id) FROM events"),
                    "llm": one("SELECT COUNT(*), MAX(id) FROM llm_calls"),
                    "sessions": one("SELECT COUNT(*), MAX(updated), MAX(ended) FROM sessions"),
                    "verdicts": one("SELECT COUNT(*), MAX(updated) FROM transfer_verdicts"),
                }
        except AnalysisError as exc:  # a store being created this very moment has no schema yet
            return {"store": False, "note": str(exc)}
        return jsonable(state)

    # --- runs ----------------------------------------------------------------------------------

    def store(self) -> Store:
        if not self.db.is_file():
            raise NotFound(f"no store in {self.root} yet: it appears once `evolve run` starts")
        return Store(self.db, readonly=True)

    def runs(self) -> dict[str, Any]:
        """The runs of the store, oldest first, and the one to show by default."""
        out: dict[str, Any] = {"workspace": str(self.root), "store": self.db.is_file(), "runs": []}
        if not out["store"] or not self.state().get("store"):
            out["store"] = False
            return out
        with self.store() as store:
            runs = store.runs()
        with read_snapshot(self.db) as conn:
            counts = dict(conn.execute("SELECT run, COUNT(*) FROM individuals GROUP BY run").fetchall())
        out["runs"] = [
            {"name": r.name, "profile": r.profile, "strategy": r.strategy, "created": r.created,
             "individuals": counts.get(r.name, 0)}
            for r in runs
        ]  # fmt: skip
        names = [r.name for r in runs]
        out["default"] = self.ws.run if self.ws.run in names else (names[-1] if names else None)
        return out

    def run_name(self, run: str | None) -> str:
        """The run a request names (checked against the store), or the default one."""
        names = []
        if self.db.is_file() and self.state().get("store"):
            with self.store() as store:
                names = [r.name for r in store.runs()]
        if run is None:
            if not names:
                raise NotFound("no run in this store yet")
            return self.ws.run if self.ws.run in names else names[-1]
        if run not in names:
            raise NotFound(f"no run {run!r} in this store (runs: {', '.join(names) or 'none yet'})")
        return run

    def settings(self, run: str) -> dict[str, Any]:
        with self.store() as store:
            r = store.get_run(run)
        return dict(r.settings) if r is not None else {}

    def depth(self, run: str) -> int:
        return int(self.settings(run).get("depth", self.ws.settings.depth))

    def mutable(self, run: str) -> tuple[str, ...]:
        return tuple(self.settings(run).get("mutable") or self.ws.settings.mutable)

    # --- the lineage frame, cached until the store changes -------------------------------------

    def _cached(self, what: str, run: str, build: Callable[[], Any]) -> Any:
        """`build()`, reused until the parts of the store it reads (FRAME_STATE) change."""
        s = self.state()
        key = tuple(str(s.get(k)) for k in FRAME_STATE)
        with self._lock:
            hit = self._cache.get((what, run))
            if hit is not None and hit[0] == key:
                return hit[1]
        value = build()
        with self._lock:
            self._cache[(what, run)] = (key, value)
        return value

    def frame(self, run: str) -> pd.DataFrame:
        """`analysis.lineage` of one run (read in one snapshot of the store)."""
        return self._cached(
            "frame", run, lambda: one_run(lineage(self.db, run), run) if self.db.is_file() else pd.DataFrame()
        )

    def row(self, run: str, individual: str) -> pd.Series:
        """The lineage row of one individual of `run`."""
        d = self.frame(run)
        hits = d[d["id"] == individual] if len(d) else d
        if not len(hits):
            raise NotFound(f"no individual {individual!r} in run {run!r}")
        return hits.iloc[0]

    def commit_of(self, run: str, individual: str) -> str:
        return str(self.row(run, individual)["commit"])

    def _snapshot(self, run: str) -> dict[str, Any]:
        """`evolve status --json`'s snapshot, plus the live session's devices."""
        now, key = time.monotonic(), str(self.state())
        with self._lock:
            hit = self._snapshots.get(run)
            if hit is not None and hit[1] == key and now - hit[0] < SNAPSHOT_TTL:
                return hit[2]
        with self.store() as store:
            r = store.get_run(run)
            if r is None:
                raise NotFound(f"no run {run!r} in this store")
            islands = int(r.settings.get("islands", self.ws.settings.islands))
            snap = snapshot(store, run, depth=self.depth(run), islands=islands, state_dir=self.ws.state_dir,
                            recent=RECENT_EVENTS)  # fmt: skip
            session = active_session(store, run)
        data = snap.to_json()
        data["session"] = None if session is None else {
            "pid": session["pid"], "devices": [d for d in session["devices"].split(",") if d],
            "slots": session["slots"], "started": session["started"], "updated": session["updated"],
        }  # fmt: skip
        with self._lock:
            self._snapshots[run] = (now, key, data)
        return data

    # --- pages ---------------------------------------------------------------------------------

    def overview(self, run: str) -> dict[str, Any]:
        """The run at a glance: devices, experiments per hour, best so far, noise floor, LLM spend, events."""
        data = dict(self._snapshot(run))
        d = self.frame(run)
        champ = champion(d) if len(d) else None
        # Its reported score: the mean over its fresh seeds once they confirmed it (evolve.champion).
        fresh = champ is not None and champ["confirmation"] == "confirmed"
        data["champion"] = None if champ is None else {
            "id": champ["id"], "val_bpb": champ["confirmed_bpb_mean"] if fresh else champ["val_bpb_mean"],
            "n": champ["confirmed_bpb_n"] if fresh else champ["val_bpb_n"], "bound": champ["bound"],
            "confirmation": champ["confirmation"], "fresh_seeds": champ["confirmed_seeds"],
            "verdict": champ["verdict"], "delta_baseline": champ["delta_baseline"],
            "description": champ["description"],
        }  # fmt: skip
        data["individuals"] = len(d)
        data["device_hours"] = float(d["gpu_seconds"].sum()) / 3600 if len(d) else 0.0
        return jsonable(data)

    def progress(self, run: str) -> dict[str, Any]:
        """Every experiment in the order it was made, the running best, and where it improved."""
        return self._cached("progress", run, lambda: self._progress(run))

    def _progress(self, run: str) -> dict[str, Any]:
        d = self.frame(run)
        if not len(d):
            return {"run": run, "n": 0}
        d = d.sort_values("created", kind="stable")
        y = d["val_bpb_mean"].to_numpy(dtype=float)
        best, record = plots.running_best(y)
        base = d.loc[d["parents"].map(len) == 0, "val_bpb_mean"].dropna()
        return jsonable({
            "run": run, "n": len(d), "depth": d["depth"].dropna().iloc[0] if d["depth"].notna().any() else None,
            "ids": d["id"], "y": y, "best": best, "record": record, "status": d["status"],
            "operator": d["operator"], "description": d["description"],
            "baseline": base.iloc[0] if len(base) else None,
            "noise_floor": (d.attrs.get("noise_floor") or {}).get(run),
        })  # fmt: skip

    def tree(self, run: str) -> dict[str, Any]:
        """Nodes at the report's tree positions (x: generation), parent edges, the champion's line."""
        return self._cached("tree", run, lambda: self._tree(run))

    def _tree(self, run: str) -> dict[str, Any]:
        d = self.frame(run)
        if not len(d):
            return {"run": run, "nodes": [], "edges": []}
        d = d.sort_values("created", kind="stable")
        x, y = plots.tree_layout(d)
        score = d["val_bpb_mean"].to_numpy(dtype=float)
        scored = ~np.isnan(score)
        lo = float(np.nanmin(score)) if scored.any() else 0.0
        hi = max(float(np.nanquantile(score, 0.9)), lo + 1e-9) if scored.any() else 1.0
        rgb = np.rint(_CMAP(np.clip((np.nan_to_num(score, nan=lo) - lo) / (hi - lo), 0, 1))[:, :3] * 255)
        colour = [f"#{r:02x}{g:02x}{b:02x}" if ok else None
                  for (r, g, b), ok in zip(rgb.astype(int).tolist(), scored, strict=True)]  # fmt: skip
        champ = champion(d)
        chain = list(first_parent_chain(d, champ["id"])["id"]) if champ is not None else []
        on_chain = set(zip(chain[:-1], chain[1:], strict=False))
        nodes = [
            {"id": r.id, "generation": r.generation, "x": x[i], "y": y[i], "status": r.status,
             "decision": r.decision, "operator": r.operator, "island": r.island, "val_bpb": r.val_bpb_mean,
             "n": r.val_bpb_n, "colour": colour[i], "description": r.description, "verdict": r.verdict,
             "champion": champ is not None and r.id == champ["id"], "root": not r.parents}
            for i, r in enumerate(d.itertuples(index=False))
        ]  # fmt: skip
        ids = set(d["id"])
        edges = [
            {"source": p, "target": r.id, "second": k > 0, "champion": (p, r.id) in on_chain}
            for r in d.itertuples(index=False)
            for k, p in enumerate(r.parents)
            if p in ids
        ]
        width = int(d.groupby("generation").size().max())
        stops = [to_hex(_CMAP(t)) for t in np.linspace(0, 1, 6)]
        return jsonable({
            "run": run, "nodes": nodes, "edges": edges, "widest": width,
            "scale": {"min": lo, "max": hi, "colours": stops} if scored.any() else None,
            "champion": champ["id"] if champ is not None else None,
        })  # fmt: skip

    def transfer(self, run: str) -> dict[str, Any]:
        """The verdicts of `evolve validate` at each validated depth, deepest first, and the champion."""
        return self._cached("transfer", run, lambda: self._transfer(run))

    def _transfer(self, run: str) -> dict[str, Any]:
        depth = self.depth(run)
        with self.store() as store:
            reports = [
                transfer_report(store, run, depth, v) for v in validated_depths(store, run) if v != depth
            ]
            champ = choose_champion(store, run, depth)
        tables = [r.to_json() for r in reversed(reports) if r is not None]
        d = self.frame(run)
        descriptions = dict(zip(d["id"], d["description"], strict=True))
        for table in tables:
            for row in table["rows"]:
                row["description"] = descriptions.get(row.get("individual") or row.get("id"), "")
        return jsonable({"run": run, "search_depth": depth, "tables": tables,
                         "champion": asdict(champ) if champ is not None else None})  # fmt: skip

    def operators(self, run: str) -> dict[str, Any]:
        """analysis' operator table (children, improvements, costs) beside the live draw chances."""
        d = self.frame(run)
        table = operator_stats(d) if len(d) else pd.DataFrame()
        live = self._snapshot(run).get("operators", {})
        rows = []
        for r in table.to_dict("records"):
            rows.append({**r, **{f"live_{k}": v for k, v in live.get(str(r["operator"]), {}).items()}})
        for name, v in live.items():  # operators that have not made a child yet
            if name not in set(table.get("operator", [])):
                rows.append({"operator": name, "children": 0, **{f"live_{k}": x for k, x in v.items()}})
        return jsonable({"run": run, "rows": rows})

    def plot_png(self, run: str, name: str) -> bytes:
        """One of the report's three matplotlib pictures, as PNG."""
        if name not in plots.PLOTS:
            raise NotFound(f"no plot {name!r} (plots: {', '.join(plots.PLOTS)})")
        d = self.frame(run)
        if not len(d):
            raise NotFound(f"run {run!r} has no individuals yet")
        return plots.png_bytes(plots.PLOTS[name](d))

    def source(self, run: str, individual: str, path: str) -> bytes:
        """A mutable file of the run (e.g. train.py) as it is in one individual's commit."""
        rel = safe_relative(path)
        if rel is None or rel not in self.mutable(run):
            raise NotFound(f"{path!r} is not a mutable file of run {run!r} ({', '.join(self.mutable(run))})")
        commit = self.commit_of(run, individual)
        proc = git_process(self.root, "cat-file", "blob", f"{commit}:{rel}", env={"GIT_OPTIONAL_LOCKS": "0"})
        if proc.returncode != 0:
            raise NotFound(f"{rel} does not exist in {individual}'s commit")
        return proc.stdout
