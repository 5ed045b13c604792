"""Transfer verdicts and the champion: does an improvement found at the search depth hold deeper?

Per individual validated at depth D (purpose `validation` in the store), two improvements over
the baseline: at the search depth and at D, each read against that depth's noise floor (the
seed-to-seed std: at the search depth the noise model's sigma (`evolve.judging`), at D pooled over
every individual with two or more ok runs there, the baseline's seeds and the candidates'; `analysis`
calls the same functions). The verdict (`verdict`) uses only the improvement at D:

- `transfers`: better than the baseline at D by more than `TRANSFER_MARGIN` noise floors;
- `does not transfer`: not better at all (or no ok run at D: it fails at that size);
- `inconclusive`: better, but not clearly (or no noise floor at D yet).

Verdicts are kept in the `transfer_verdicts` table (one row per individual and validation depth),
which `analysis.lineage()` reads as its `verdict` column. The champion (`pick_champion`, one rule
that `analysis` calls too) is the transferring individual with the best mean at the deepest
validated depth; when none transfers, the elite confirmed on fresh seeds with the best mean over
those seeds (`evolve.confirmation`); before any is confirmed, the best accepted individual by its
bound not shown to fail deeper, marked unconfirmed. `resolve_champion` and `lineage_scores` are
the hooks `evolve export champion` looks for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd

from genome import GenomeError, open_workspace

from .confirmation import confirmations
from .errors import EvolveError
from .judging import Evidence, run_alpha
from .promotion import PromotionPolicy, Score, pooled_std
from .store import Individual, Purpose, Store

DB_FILE = "evolve.db"
TABLE = "transfer_verdicts"
# Better than the baseline at the validation depth by more than this many noise floors: transfers
# (the same margin as promotion's and analysis's).
TRANSFER_MARGIN = 2.0


class Verdict(str, Enum):
    TRANSFERS = "transfers"
    DOES_NOT_TRANSFER = "does not transfer"
    INCONCLUSIVE = "inconclusive"


def verdict(gain: float | None, floor: float | None, margin: float = TRANSFER_MARGIN) -> Verdict:
    """The rule on one improvement (baseline mean minus the individual's mean; > 0 is better).

    `gain` None means the individual has no ok run at that depth: it does not transfer."""
    if gain is None or gain <= 0:
        return Verdict.DOES_NOT_TRANSFER
    if floor is not None and gain > margin * floor:
        return Verdict.TRANSFERS
    return Verdict.INCONCLUSIVE


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None below two points or on no spread."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs two sequences of the same length")
    if len(xs) < 2:
        return None
    rho = pd.Series(list(xs), dtype=float).rank().corr(pd.Series(list(ys), dtype=float).rank())
    return None if rho is None or math.isnan(rho) else float(rho)


def baseline_of(store: Store, run: str) -> Individual | None:
    """The run's generation 0: the root the engine calls `baseline` when there are several."""
    roots = [i for i in store.individuals(run) if not i.parents]
    named = [i for i in roots if i.operator == "baseline"]
    return (named or roots or [None])[0]


@dataclass(frozen=True)
class TransferRow:
    """One validated individual: its means and improvements at both depths, and the verdict."""

    individual: str
    description: str
    search: Score | None
    validation: Score | None
    search_delta: float | None  # mean minus the baseline's mean at the search depth (< 0: better)
    validation_delta: float | None  # the same at the validation depth
    failed: int  # validation runs that were not ok
    verdict: Verdict
    reason: str

    @staticmethod
    def _floors(delta: float | None, floor: float | None) -> float | None:
        return None if delta is None or not floor else -delta / floor

    def to_json(self, search_floor: float | None, validation_floor: float | None) -> dict[str, Any]:
        score = lambda s: None if s is None else asdict(s)
        return {
            "id": self.individual,
            "description": self.description,
            "search": score(self.search),
            "validation": score(self.validation),
            "search_delta": self.search_delta,
            "search_gain_floors": self._floors(self.search_delta, search_floor),
            "validation_delta": self.validation_delta,
            "validation_gain_floors": self._floors(self.validation_delta, validation_floor),
            "failed": self.failed,
            "verdict": self.verdict.value,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class TransferReport:
    """Every individual validated at one depth, best at that depth first."""

    run: str
    search_depth: int
    validation_depth: int
    budget: float | None  # the validation runs' budget
    baseline: str
    baseline_search: Score | None
    baseline_validation: Score | None
    search_floor: float | None
    validation_floor: float | None
    rows: tuple[TransferRow, ...]
    spearman: float | None  # rank correlation of the search and validation means over the rows
    budget_unit: str = "seconds"  # what `budget` counts: seconds or training tokens

    def row(self, individual: str) -> TransferRow:
        for r in self.rows:
            if r.individual == individual:
                return r
        raise KeyError(individual)

    def to_json(self) -> dict[str, Any]:
        score = lambda s: None if s is None else asdict(s)
        return {
            "run": self.run,
            "search_depth": self.search_depth,
            "validation_depth": self.validation_depth,
            "budget": self.budget,
            "budget_unit": self.budget_unit,
            "baseline": {
                "id": self.baseline,
                "search": score(self.baseline_search),
                "validation": score(self.baseline_validation),
            },
            "noise_floor": {"search": self.search_floor, "validation": self.validation_floor},
            "spearman": self.spearman,
            "rows": [r.to_json(self.search_floor, self.validation_floor) for r in self.rows],
        }


def transfer_report(
    store: Store, run: str, search_depth: int, validation_depth: int, margin: float = TRANSFER_MARGIN
) -> TransferReport | None:
    """The verdicts of every individual with validation runs at `validation_depth`; None without any."""
    base = baseline_of(store, run)
    if base is None:
        return None
    runs = [e for e in store.evaluations(run=run, purpose=Purpose.VALIDATION) if e.depth == validation_depth]
    if not runs:
        return None
    search = store.scores(search_depth, run)
    values = store.values(validation_depth, run, purposes=(Purpose.VALIDATION,))
    validation = {ind: Score.of(v) for ind, v in values.items()}
    search_floor = Evidence(store, run, search_depth).model().sigma
    validation_floor = pooled_std(values.values())
    base_s, base_v = search.get(base.id), validation.get(base.id)
    rows = []
    for ind_id in dict.fromkeys(e.individual for e in runs):
        if ind_id == base.id:
            continue
        ind = store.get(ind_id)
        s, v = search.get(ind_id), validation.get(ind_id)
        s_delta = s.mean - base_s.mean if s is not None and base_s is not None else None
        v_delta = v.mean - base_v.mean if v is not None and base_v is not None else None
        failed = sum(1 for e in runs if e.individual == ind_id and not e.ok)
        if base_v is None:
            decided, reason = Verdict.INCONCLUSIVE, f"the baseline has no ok run at depth {validation_depth}"
        elif v is None:
            decided, reason = (
                Verdict.DOES_NOT_TRANSFER,
                f"no ok run at depth {validation_depth} ({failed} failed)",
            )
        else:
            gain = -v_delta if v_delta is not None else None
            decided = verdict(gain, validation_floor, margin)
            floor_text = f"{validation_floor:.6f}" if validation_floor is not None else "not measured"
            reason = f"{gain:+.6f} vs the baseline at depth {validation_depth}, noise floor {floor_text}"
        rows.append(
            TransferRow(
                individual=ind_id,
                description=ind.description if ind else "",
                search=s,
                validation=v,
                search_delta=s_delta,
                validation_delta=v_delta,
                failed=failed,
                verdict=decided,
                reason=reason,
            )
        )
    rows.sort(key=lambda r: (r.validation is None, r.validation.mean if r.validation else 0.0, r.individual))
    paired = [r for r in rows if r.search is not None and r.validation is not None]
    rho = spearman([r.search.mean for r in paired], [r.validation.mean for r in paired])  # type: ignore[union-attr]
    budgets = {e.budget for e in runs}
    return TransferReport(
        run=run,
        search_depth=search_depth,
        validation_depth=validation_depth,
        budget=budgets.pop() if len(budgets) == 1 else None,
        budget_unit=runs[0].budget_unit,
        baseline=base.id,
        baseline_search=base_s,
        baseline_validation=base_v,
        search_floor=search_floor,
        validation_floor=validation_floor,
        rows=tuple(rows),
        spearman=rho,
    )


# --- the verdict table --------------------------------------------------------------------------


def _has_table(store: Store) -> bool:
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).fetchone()
    return row is not None


def save_verdicts(store: Store, report: TransferReport) -> None:
    """Write the report's verdicts in one transaction (a row re-written moves last, as the newest)."""
    now = time.time()
    with store.transaction() as conn:
        for r in report.rows:
            conn.execute(
                f"INSERT OR REPLACE INTO {TABLE} (run, individual, search_depth, validation_depth, budget,"
                " search_mean, search_n, search_delta, search_floor, validation_mean, validation_n,"
                " validation_delta, validation_floor, verdict, reason, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    report.run, r.individual, report.search_depth, report.validation_depth, report.budget,
                    r.search.mean if r.search else None, r.search.n if r.search else 0, r.search_delta,
                    report.search_floor, r.validation.mean if r.validation else None,
                    r.validation.n if r.validation else 0, r.validation_delta, report.validation_floor,
                    r.verdict.value, r.reason, now,
                ),
            )  # fmt: skip


@dataclass(frozen=True)
class StoredVerdict:
    individual: str
    validation_depth: int
    validation_mean: float | None
    verdict: Verdict
    reason: str


def stored_verdicts(store: Store, run: str, depth: int | None = None) -> list[StoredVerdict]:
    """The verdicts kept for `run` at `depth` (default: the deepest validated depth)."""
    if not _has_table(store):
        return []  # a store from before validation existed, opened read-only
    with store.transaction() as conn:
        if depth is None:
            depth = conn.execute(
                f"SELECT MAX(validation_depth) FROM {TABLE} WHERE run = ?", (run,)
            ).fetchone()[0]
        rows = conn.execute(
            f"SELECT individual, validation_depth, validation_mean, verdict, reason FROM {TABLE}"
            " WHERE run = ? AND validation_depth = ? ORDER BY rowid",
            (run, depth),
        ).fetchall()
    return [StoredVerdict(r[0], r[1], r[2], Verdict(r[3]), r[4]) for r in rows]


def validated_depths(store: Store, run: str) -> list[int]:
    """Depths at which `run` has validation runs, shallowest first."""
    depths = {e.depth for e in store.evaluations(run=run, purpose=Purpose.VALIDATION)}
    return sorted(depths)


# --- the champion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """What the champion rule needs to know about one individual (`pick_champion`)."""

    id: str
    baseline: bool
    accepted: bool
    mean: float | None  # mean over all its ok runs at the search depth
    bound: float | None  # the pessimistic bound elites are ranked by (evolve.promotion.pessimistic)
    confirmation: str | None = None  # pending, confirmed, failed (evolve.confirmation), or None
    fresh_mean: float | None = None  # mean over its fresh confirmation seeds alone
    fresh_n: int = 0
    fresh_seeds: str = ""  # e.g. "45-47"
    verdict: str | None = None  # the transfer verdict kept by `evolve validate`
    validation_mean: float | None = None
    validation_depth: int | None = None


@dataclass(frozen=True)
class Champion:
    id: str
    validated: bool  # True: its improvement transfers to `validation_depth`
    search_mean: float | None  # its reported score at the search depth: the fresh-seed mean once confirmed
    validation_depth: int | None
    validation_mean: float | None
    reason: str
    confirmed: bool = False  # scored on fresh seeds it was never chosen on
    fresh_n: int = 0

    def label(self) -> str:
        if self.validated:
            return f"{self.id} (transfers to depth {self.validation_depth})"
        if self.confirmed:
            return f"{self.id} (confirmed on {self.fresh_n} fresh seeds; unvalidated)"
        return f"{self.id} (unvalidated: {self.reason})"


def _reported(c: Candidate) -> float | None:
    return c.fresh_mean if c.confirmation == "confirmed" else c.mean


def pick_champion(candidates: Iterable[Candidate], search_depth: int) -> Champion | None:
    """The champion rule, on plain facts (the store's through `choose_champion`, a frame's in analysis).

    1. the transferring individual with the best mean at its validation depth;
    2. else the confirmed elite (scored on fresh seeds) with the best fresh-seed mean, unless
       shown not to transfer or its fresh-seed mean does not beat the baseline's mean;
    3. else the best accepted individual by its bound that was not shown to fail deeper (nor
       failed or lost its confirmation), the baseline last, marked unconfirmed;
    4. else the best scored individual."""
    cands = [c for c in candidates if c.mean is not None]
    transfers = [c for c in cands if c.verdict == Verdict.TRANSFERS.value and c.validation_mean is not None]
    if transfers:
        best = min(transfers, key=lambda c: (c.validation_mean, c.id))
        return Champion(best.id, True, _reported(best), best.validation_depth, best.validation_mean,
                        f"best of {len(transfers)} that transfer", best.confirmation == "confirmed",
                        best.fresh_n)  # fmt: skip
    failing = {c.id for c in cands if c.verdict == Verdict.DOES_NOT_TRANSFER.value}
    base = next((c for c in cands if c.baseline), None)
    # a fresh-seed mean that does not beat the baseline's refutes the elite as the best
    refuted = {c.id for c in cands if c.confirmation == "confirmed" and c.fresh_mean is not None
               and base is not None and base.mean is not None and c.fresh_mean >= base.mean}  # fmt: skip
    confirmed = [c for c in cands if c.accepted and not c.baseline and c.confirmation == "confirmed"
                 and c.fresh_mean is not None and c.id not in failing | refuted]  # fmt: skip
    if confirmed:
        best = min(confirmed, key=lambda c: (c.fresh_mean, c.id))
        reason = (
            f"confirmed: mean over {best.fresh_n} fresh seeds ({best.fresh_seeds}) at depth {search_depth}"
        )
        if len(confirmed) > 1:
            reason += f", best of {len(confirmed)} confirmed"
        return Champion(best.id, False, best.fresh_mean, best.validation_depth, best.validation_mean, reason,
                        True, best.fresh_n)  # fmt: skip
    accepted = [c for c in cands if c.accepted]
    board = sorted(accepted or cands, key=lambda c: (c.bound if c.bound is not None else c.mean, c.id))
    if not board:
        return None
    broken = {c.id for c in board if c.confirmation == "failed"} | refuted  # never, while another is left
    bases = {c.id for c in board if c.baseline}
    top = next(
        (c for ok in (lambda c: c.id not in failing | bases | broken, lambda c: c.id not in bases | broken,
                      lambda c: c.id not in broken, lambda c: True)
         for c in board if ok(c)),
    )  # fmt: skip
    deeper = [c for c in cands if c.verdict is not None]
    if top.verdict is not None:
        reason = f"best at depth {search_depth}; {top.verdict} at depth {top.validation_depth}"
    elif deeper:
        reason = (
            f"best at depth {search_depth} not shown to fail at depth {deeper[0].validation_depth}; "
            "none validated there transfers"
        )
    else:
        reason = f"best at depth {search_depth}; run `evolve validate` to check that it transfers"
    if not top.baseline and top.confirmation != "confirmed":
        reason += (
            "; not confirmed on fresh seeds yet"
            if top.confirmation != "failed"
            else "; failed its fresh seeds"
        )
    return Champion(top.id, False, top.mean, top.validation_depth, top.validation_mean, reason)


def candidates_of(store: Store, run: str, search_depth: int, alpha: float | None = None) -> list[Candidate]:
    """Every scored individual of `run` as the champion rule sees it."""
    policy = PromotionPolicy(alpha=alpha if alpha is not None else run_alpha(store, run))
    ev = Evidence(store, run, search_depth)
    kept = {v.individual: v for v in stored_verdicts(store, run)}
    confirms = {c.individual: c for c in confirmations(store, run, search_depth)}
    out = []
    for ind_id, ind in ev.individuals.items():
        score = ev.score(ind_id)
        if score is None:
            continue
        v, c = kept.get(ind_id), confirms.get(ind_id)
        out.append(Candidate(
            id=ind_id, baseline=not ind.parents, accepted=ind.decision == "accept", mean=score.mean,
            bound=ev.bound(ind_id, policy), confirmation=c.status if c else None,
            fresh_mean=c.mean if c else None, fresh_n=c.n if c else 0, fresh_seeds=c.seed_text if c else "",
            verdict=v.verdict.value if v else None, validation_mean=v.validation_mean if v else None,
            validation_depth=v.validation_depth if v else None,
        ))  # fmt: skip
    return out


def choose_champion(store: Store, run: str, search_depth: int) -> Champion | None:
    """The champion of `run` (see `pick_champion`): what `evolve export champion` ships and
    `evolve validate` takes first."""
    return pick_champion(candidates_of(store, run, search_depth), search_depth)


# --- the hooks of `evolve export` -----------------------------------------------------------------


def _open(root: Path | str) -> tuple[Store, str, int] | None:
    try:
        ws = open_workspace(root)
    except GenomeError as exc:
        raise EvolveError(str(exc)) from None
    db = ws.state_dir / DB_FILE
    if not db.exists():
        return None
    store = Store(db, readonly=True)
    run = store.get_run(ws.run)
    depth = int(run.settings.get("depth", ws.settings.depth)) if run else ws.settings.depth
    return store, ws.run, depth


def resolve_champion(root: Path | str) -> str:
    """The champion's id (see `choose_champion`) of the workspace's run."""
    opened = _open(root)
    if opened is None:
        raise EvolveError(f"no evolution in {root} yet, so no champion; run `evolve run` first")
    store, run, depth = opened
    with store:
        champ = choose_champion(store, run, depth)
    if champ is None:
        raise EvolveError(f"run {run!r} has no scored individual yet; wait for the baseline's evaluations")
    return champ.id


def lineage_scores(root: Path | str, ids: Iterable[str]) -> dict[str, float | str]:
    """Scores for the export message: the mean val_bpb, with the validation and the champion mark
    for individuals validated deeper; the champion's score is its fresh-seed mean once confirmed.
    Empty when the workspace has no store yet."""
    opened = _open(root)
    if opened is None:
        return {}
    store, run, depth = opened
    with store:
        scores = store.scores(depth, run)
        kept = {v.individual: v for v in stored_verdicts(store, run)}
        cands = candidates_of(store, run, depth)
        champ = pick_champion(cands, depth)
    fresh = {c.id: c for c in cands if c.confirmation == "confirmed"}
    out: dict[str, float | str] = {}
    for ind in ids:
        if ind not in scores:
            continue
        v = kept.get(ind)
        is_champion = champ is not None and ind == champ.id
        if v is None and not is_champion:
            out[ind] = scores[ind].mean  # export prints it as "val_bpb 0.981234"
            continue
        if is_champion and ind in fresh:
            c = fresh[ind]
            text = f"val_bpb {c.fresh_mean:.6f} at depth {depth} on fresh seeds {c.fresh_seeds}"
        else:
            text = f"val_bpb {scores[ind].mean:.6f} at depth {depth}"
        if v is not None and v.validation_mean is not None:
            text += f", {v.validation_mean:.6f} at depth {v.validation_depth} ({v.verdict.value})"
        elif v is not None:
            text += f", {v.verdict.value} at depth {v.validation_depth}"
        if is_champion:
            text += "; champion" + ("" if champ.validated else ", unvalidated")
        out[ind] = text
    return out
