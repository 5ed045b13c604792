"""What a run looks like right now: a `Snapshot` read from the store, drawn with rich or as plain lines.

`evolve run` redraws it every second in a terminal; without one (a log file, `nohup`, CI) it
prints one summary line every `interval` seconds and one line per notable event instead, so a
multi-day log stays readable with `tail -f` and `grep`. `evolve status` draws the same snapshot
once, from another process (the store is read-only there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from prepare.profiles import PROFILES, budget_text

from . import confirmation as confirm
from .champion import choose_champion
from .judging import Evidence
from .operators.weights import PROPOSAL_FAILED, OperatorWeights, credits_from_store
from .population import Strategy, from_store
from .promotion import Score
from .scheduler import DutySummary, active_session, duty_summary, latest_session
from .store import Status, Store

SNAPSHOT_SHARE = 20  # the live view's snapshots take at most 1/20 of the controller's time


@dataclass(frozen=True)
class Device:
    name: str
    individual: str | None  # what it is training, None when idle
    seconds: float  # how long it has been on it


@dataclass(frozen=True)
class Line:
    """One individual in a table: id, score, description."""

    id: str
    mean: float | None
    std: float
    n: int
    description: str
    island: int = 0
    operator: str = ""

    def score_text(self) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.6f} ± {self.std:.4f} (n={self.n})"


@dataclass(frozen=True)
class Snapshot:
    run: str
    profile: str
    strategy: str
    depth: int
    budget: float
    active: bool  # a session is running (or was killed without ending)
    uptime: float  # seconds of the current session; when stopped, how long the last one ran (0: none yet)
    counts: dict[str, int]
    queued: int
    devices: list[Device]
    islands: dict[int, list[Line]]  # members per island, best first
    best: Line | None  # the champion, with the score it is reported with
    baseline: Line | None
    noise_floor: float | None  # the noise model's sigma
    duty: DutySummary
    operators: dict[str, dict[str, float]]  # children, improvements, failed, no_child, attempts, chance
    disk_bytes: int
    log_files: int
    llm: dict[
        str, float
    ]  # calls, failures, unusable, prompt_tokens, completion_tokens, tokens, cost, mean_latency
    recent: list[str] = field(default_factory=list)
    noise: str = ""  # the noise model in words (sigma, tau, their degrees of freedom)
    best_note: str = ""  # why the champion is the best: confirmed on fresh seeds, or not yet
    budget_unit: str = "seconds"  # what `budget` counts: seconds or training tokens
    score_key: str = ""  # the comparability key of the run's scores ("" before the first ok run)
    # runs left out of the scores because they ran under another key, by that key: the engine's
    # `aside` events (not recorded) and ok evaluations the store holds under another key
    set_aside: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["duty"] = {
            **asdict(self.duty),
            "duty_cycle": self.duty.duty_cycle,
            "busy_fraction": self.duty.busy_fraction,
            "experiments_per_hour": self.duty.per_hour,
        }
        data["islands"] = {str(k): v for k, v in self.islands.items()}
        return data


def _line(store: Store, ind_id: str, score: Score | None) -> Line | None:
    ind = store.get(ind_id)
    if ind is None:
        return None
    return Line(
        id=ind.id,
        mean=score.mean if score else None,
        std=score.std if score else 0.0,
        n=score.n if score else 0,
        description=ind.description,
        island=ind.island,
        operator=ind.operator,
    )


def _tree_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and "worktrees" not in p.parts:
                total += p.stat().st_size
        except OSError:
            pass
    return total


def event_text(kind: str, p: dict[str, Any]) -> str | None:
    """One line for a notable event, or None for the ones not worth a line."""
    if kind == "evaluated":
        score = f"val_bpb {p['val_bpb']:.6f}" if p.get("val_bpb") is not None else p.get("reason", "")
        return f"{p['id']} {p['purpose']} seed {p['seed']}: {p['status']} {score} ({p.get('wall', 0):.0f} s)"
    if kind == "decision":
        return f"{p['id']} {p['action']}: {p.get('reason', '')}"
    if kind == "aside":
        return f"{p['id']} {p.get('purpose')} seed {p.get('seed')}: set aside, {p.get('reason', '')}"
    if kind == "reevaluate":
        return f"{p['id']} next seed: {p.get('reason', '')}"
    if kind == "pair":
        return f"{p['id']} runs seed {','.join(map(str, p.get('seeds', [])))} to pair with its child {p.get('child')}"
    if kind == "confirm_start":
        return f"{p['id']} confirm: {p.get('reason', '')}"
    if kind == "confirmed":
        mean = f"mean {p['mean']:.6f} over fresh seeds {p.get('seeds')}" if p.get("mean") is not None else ""
        return f"{p['id']} {p.get('status')}: {mean} ({p.get('reason', '')})"
    if kind == "proposed":
        what = "queued" if p.get("status") == "queued" else f"rejected ({p.get('reason', '')})"
        return f"{p['id']} by {p['operator']} from {'+'.join(p.get('parents', []))}: {p.get('description', '')} [{what}]"
    if kind == PROPOSAL_FAILED:
        return f"proposal by {p.get('operator')} failed: {p.get('error', '')}"
    if kind == "migration":
        return f"migration: {p['member']} island {p['source']} -> {p['target']}"
    if kind == "operator_skipped":
        return f"operator {p.get('operator')} left out: {p.get('reason', '')}"
    if kind == "operator_exhausted":
        rest = ", ".join(p.get("remaining") or []) or "none: the run stops once the queue is trained"
        return (
            f"operator {p.get('operator')} is spent (LLM spend ${p.get('llm_usd', 0):.4f} reached the cap); "
            f"going on with {rest}"
        )
    if kind in ("session_start", "session_end", "resume") or "device" in kind or "quarantine" in kind:
        return f"{kind.replace('_', ' ')}: " + ", ".join(f"{k}={v}" for k, v in p.items())
    return None


def snapshot(
    store: Store,
    run: str,
    *,
    depth: int,
    islands: int = 1,
    strategy: Strategy | None = None,
    devices: list[Device] | None = None,
    state_dir: Path | None = None,
    recent: int = 8,
) -> Snapshot:
    """Read the run's state from the store (and, inside `evolve run`, the live strategy/devices)."""
    r = store.get_run(run)
    if r is None:
        raise LookupError(run)
    everything = store.individuals(run)
    counts: dict[str, int] = {}
    for ind in everything:
        counts[ind.status.value] = counts.get(ind.status.value, 0) + 1
    scores = store.scores(depth, run)
    if strategy is None:
        strategy = from_store(
            store, run, depth, r.strategy, **({"islands": islands} if r.strategy == "population" else {})
        )
    n_islands = getattr(strategy, "n_islands", 1)
    island_lines: dict[int, list[Line]] = {}
    for i in range(n_islands):
        lines = [_line(store, m.id, scores.get(m.id)) for m in strategy.members(i if n_islands > 1 else None)]
        island_lines[i] = [x for x in lines if x is not None]
    ev = Evidence(store, run, depth)
    model = ev.model()
    champ = choose_champion(store, run, depth)
    best = None
    if champ is not None:
        c = confirm.get(store, champ.id, depth) if champ.confirmed else None
        best = _line(store, champ.id, c.score() if c is not None else scores.get(champ.id))
    baseline_row = next((i for i in everything if not i.parents), None)
    baseline = _line(store, baseline_row.id, scores.get(baseline_row.id)) if baseline_row else None
    session = active_session(store, run)
    if devices is None:
        now = time.time()
        running = store.individuals(run, status=Status.RUNNING) if session is not None else []
        devices = [Device(f"busy {k}", i.id, now - (i.started or now)) for k, i in enumerate(running)]
    stats = store.operator_stats(run)
    credits = credits_from_store(store, run)
    names = sorted(set(stats) | set(credits) - {"baseline", ""})
    spent = _exhausted(store, run)
    probs = OperatorWeights().probabilities(
        [n for n in names if n not in spent], credits, r.settings.get("operator_weights") or {}
    )
    no_child: dict[str, int] = {}
    for ev in store.events(run, kind=PROPOSAL_FAILED):
        name = str(ev.payload.get("operator", ""))
        no_child[name] = no_child.get(name, 0) + 1
    operators = {
        n: {
            "no_child": no_child.get(n, 0),
            "children": stats.get(n, {}).get("children", 0),
            "improvements": stats.get(n, {}).get("improvements", 0),
            "failed": stats.get(n, {}).get("failures", 0),
            "attempts": credits.get(n).attempts if n in credits else 0,
            "chance": round(probs.get(n, 0.0), 3),
        }
        for n in names
    }
    disk = store.disk_use()
    extra = _tree_bytes(state_dir) - disk.db_bytes - disk.log_bytes if state_dir is not None else 0
    key = store.score_key(depth, run)
    aside: dict[str, int] = {}
    for ev in store.events(run, kind="aside"):
        other = str(ev.payload.get("key", ""))
        aside[other] = aside.get(other, 0) + 1
    for other, n in store.set_aside(depth, run).items():
        aside[str(other)] = aside.get(str(other), 0) + n
    lines = []
    for ev in store.events(run, last=200):
        text = event_text(ev.kind, ev.payload)
        if text:
            lines.append(time.strftime("%H:%M:%S ", time.localtime(ev.time)) + text)
    return Snapshot(
        run=run,
        profile=r.profile,
        strategy=r.strategy,
        depth=depth,
        budget=float(r.settings.get("budget", 0.0)),
        budget_unit=_unit(r.profile),
        active=session is not None,
        uptime=_uptime(session, latest_session(store, run) if session is None else None),
        counts=counts,
        queued=counts.get(Status.QUEUED.value, 0),
        devices=devices,
        islands=island_lines,
        best=best,
        baseline=baseline,
        noise_floor=model.sigma,
        duty=duty_summary(store, run),
        operators=operators,
        disk_bytes=disk.total_bytes + max(0, extra),
        log_files=disk.log_files,
        llm=_llm_totals(store.llm_spend(run)),
        recent=lines[-recent:],
        noise=model.describe(),
        best_note=champ.reason if champ is not None else "",
        score_key=str(key) if key is not None else "",
        set_aside=aside,
    )


def _uptime(active: dict | None, last: dict | None) -> float:
    """The running session's age; else the last one's length (its end, or its last heartbeat when it
    was killed), so the line printed after a session ends does not read 0:00:00."""
    if active is not None:
        return time.time() - active["started"]
    if last is None:
        return 0.0
    return max(0.0, (last["ended"] or last["updated"]) - last["started"])


def _exhausted(store: Store, run: str) -> set[str]:
    """Operators the latest session found spent (they are drawn no more)."""
    starts = store.events(run, kind="session_start")
    after = starts[-1].id if starts else 0
    return {
        str(e.payload.get("operator", ""))
        for e in store.events(run, kind="operator_exhausted", after_id=after)
    }


def _llm_totals(spend: dict[str, float]) -> dict[str, float]:
    return {**spend, "tokens": int(spend.get("prompt_tokens", 0)) + int(spend.get("completion_tokens", 0))}


# --- drawing ---------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None else "-"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else f"{n:.0f}"


def llm_text(llm: dict[str, float]) -> str:
    """LLM calls, tokens and cost in one phrase (`LLM: no calls` for a run without them)."""
    calls = int(llm.get("calls", 0))
    if not calls:
        return "LLM: no calls"
    failed, unusable = int(llm.get("failures", 0)), int(llm.get("unusable", 0))
    notes = [f"{failed} failed"] * bool(failed) + [f"{unusable} unusable"] * bool(unusable)
    return (
        f"LLM: {calls} calls" + (f" ({', '.join(notes)})" if notes else "")
        + f", {_count(llm.get('tokens', 0))} tokens ({_count(llm.get('prompt_tokens', 0))} prompt"
        f" + {_count(llm.get('completion_tokens', 0))} completion), ${llm.get('cost', 0.0):.4f}"
    )  # fmt: skip


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def plain_line(s: Snapshot) -> str:
    """The one-line summary printed periodically when there is no terminal."""
    busy = sum(1 for d in s.devices if d.individual)
    counts = " ".join(f"{k} {v}" for k, v in sorted(s.counts.items()))
    best = f"best {s.best.id} {s.best.score_text()} {s.best.description!r}" if s.best else "best -"
    if s.best and s.best_note:
        best += f" ({s.best_note})"
    floor = f"{s.noise_floor:.5f}" if s.noise_floor is not None else "-"
    rate = f"{s.duty.per_hour:.1f}" if s.duty.per_hour else "-"
    return (
        f"[{s.run} {_clock(s.uptime)}] devices {busy}/{len(s.devices)} busy | queue {s.queued} | {counts} | "
        f"{best} | noise floor {floor} | {rate} exp/h | duty {_pct(s.duty.duty_cycle)}"
        + (f" | set aside {sum(s.set_aside.values())}" if s.set_aside else "")
        + (f" | {llm_text(s.llm)}" if s.llm.get("calls") else "")
    )


def aside_text(s: Snapshot) -> str:
    """The runs left out of the scores for their key, in one line ("" when none were)."""
    if not s.set_aside:
        return ""
    parts = ", ".join(f"{n} at {key or 'an unknown key'}" for key, n in sorted(s.set_aside.items()))
    return f"set aside (not scored: the run's scores are at {s.score_key}): {parts}"


def _unit(profile: str) -> str:
    """The budget unit of a run's profile (seconds for a profile this install does not know)."""
    known = PROFILES.get(profile)
    return known.budget_unit if known is not None else "seconds"


def render(s: Snapshot) -> Panel:
    """The full screen: header, devices, best and islands, operators, recent events."""
    floor = f"{s.noise_floor:.5f}" if s.noise_floor is not None else "not measured yet"
    rate = f"{s.duty.per_hour:.1f}" if s.duty.per_hour else "-"
    header = Text.assemble(
        (f"{s.run}", "bold"),
        f"  {s.strategy}, profile {s.profile}, depth {s.depth}, budget {budget_text(s.budget, s.budget_unit)}  |  ",
        ("running " + _clock(s.uptime) if s.active else "stopped", "green" if s.active else "yellow"),
        f"\nnoise floor {floor} ({s.noise or '-'})  |  {rate} experiments/h  |  duty cycle {_pct(s.duty.duty_cycle)}"
        f" (devices busy {_pct(s.duty.busy_fraction)})  |  disk {_size(s.disk_bytes)}",
        f"\n{llm_text(s.llm)}",
        (f"\n{aside_text(s)}" if s.set_aside else "", "yellow"),
    )
    status = Text("  ".join(f"{k}: {v}" for k, v in sorted(s.counts.items())) or "no individuals yet")
    best = Text("best: -")
    if s.best:
        base = ""
        if s.baseline and s.baseline.mean is not None and s.best.mean is not None:
            base = f"  ({s.best.mean - s.baseline.mean:+.6f} vs baseline)"
        note = f"\n      {s.best_note}" if s.best_note else ""
        best = Text.assemble(
            ("best: ", "bold"), f"{s.best.id} {s.best.score_text()}{base}\n      {s.best.description}{note}"
        )

    devices = Table(title="devices", expand=True, show_edge=False)
    devices.add_column("device")
    devices.add_column("training")
    devices.add_column("for", justify="right")
    for d in s.devices:
        devices.add_row(
            d.name, d.individual or "[dim]idle[/dim]", f"{d.seconds:.0f} s" if d.individual else ""
        )
    devices.add_row("queue", f"{s.queued} ready", "")

    islands = Table(title="population", expand=True, show_edge=False)
    islands.add_column("island", justify="right")
    islands.add_column("members", justify="right")
    islands.add_column("best")
    for i, lines in s.islands.items():
        top = lines[0] if lines else None
        islands.add_row(str(i), str(len(lines)), f"{top.id} {top.mean:.6f}" if top and top.mean else "-")

    ops = Table(title="operators", show_edge=False)
    for col in ("operator", "children", "beat parent", "failed/refused", "no child", "chance"):
        ops.add_column(col, justify="left" if col == "operator" else "right")
    for name, o in s.operators.items():
        ops.add_row(name, str(o["children"]), str(o["improvements"]), str(o["failed"]),
                    str(o["no_child"]), _pct(o["chance"]))  # fmt: skip

    grid = Table.grid(expand=True)
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(devices, islands)
    recent = Text("\n".join(s.recent) or "no events yet", style="dim")
    return Panel(Group(header, status, best, grid, ops, recent), title="autoevolve", border_style="blue")


class LiveView:
    """Redraws a snapshot in a terminal; prints plain lines (events + a periodic summary) otherwise."""

    def __init__(
        self,
        source: Callable[[], Snapshot],
        console: Console | None = None,
        *,
        interval: float = 30.0,
        refresh: float = 1.0,
    ) -> None:
        self.source = source
        self.console = console or Console()
        self.interval = interval
        self.refresh = refresh
        self.terminal = self.console.is_terminal
        self._live: Live | None = None
        self._last = 0.0
        self._cost = 0.0  # seconds the last snapshot took
        self._lock = threading.Lock()

    def __enter__(self) -> LiveView:
        if self.terminal:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.tick(force=True)
        finally:
            if self._live is not None:
                self._live.__exit__(None, None, None)
                self._live = None

    def tick(self, force: bool = False) -> None:
        """Called by the run's main loop every half second."""
        now = time.time()
        period = self.refresh if self.terminal else self.interval
        # A snapshot reads the whole run: at many thousand children it takes a while, so it is
        # taken at most 1/SNAPSHOT_SHARE of the time, whatever the refresh asked for.
        if not force and now - self._last < max(period, SNAPSHOT_SHARE * self._cost):
            return
        self._last = now
        try:
            snap = self.source()
        except LookupError:
            return  # the run row does not exist yet
        finally:
            self._cost = time.time() - now
        with self._lock:
            if self._live is not None:
                self._live.update(render(snap))
            else:
                self.console.print(plain_line(snap), highlight=False, soft_wrap=True, markup=False)

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Called from worker threads; in plain mode, notable events become lines."""
        if self.terminal:
            return
        text = event_text(kind, payload)
        if text:
            with self._lock:
                self.console.print(
                    time.strftime("%H:%M:%S ") + text, highlight=False, soft_wrap=True, markup=False
                )
