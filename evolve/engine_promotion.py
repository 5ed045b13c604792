"""The engine's promotion: judging children, pairing runs of parents, confirming the best elite.

A mixin of `Engine` (it uses the engine's store, strategy, policy, events and lock): after each
recorded run, `_promote` judges the child with the paired sequential test of `evolve.promotion`
(read from the store by `evolve.judging`): accept, reject, run its next seed, or, when the child
has a seed its parent never ran, queue the parent for that seed (`pair`) and judge the child again
once that run lands (`_serviced`). When the best elite by its bound changes, it is run on fresh
seeds (`confirm_start`, `confirmed`: `evolve.confirmation`). Every such request is a store row
(the individual queued, a confirmation row) written in the transaction of the evaluation that
caused it, so a kill -9 loses none of them; on resume `_decide_undecided` judges waiting children
again, which asks again for what is still missing.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from . import confirmation as confirm
from .judging import FIRST_SEED, Evidence
from .operators.base import Outcome
from .population import MIGRATION_EVENT, Member, member_of
from .promotion import Action
from .store import Status

if TYPE_CHECKING:
    from .engine import Engine

REEVAL_PRIORITY = 10  # re-evaluations, pairing runs and fresh seeds jump the queue: decisions wait on them


class Promotion:
    """Promotion's half of `Engine`."""

    def _evidence(self: Engine) -> Evidence:
        return Evidence(self.store, self.run_name, self.config.depth)

    def _promote(self: Engine, individual: str) -> list[Outcome]:
        """Judge a child after one of its runs or its parent's (inside the recording transaction)."""
        assert self.strategy is not None
        ev = self._evidence()
        ind = ev.individuals[individual]
        judged = ev.judge(individual, self.policy)
        d = judged.decision
        if d.action is Action.REEVALUATE:
            self.store.set_status(ind.id, Status.QUEUED, priority=REEVAL_PRIORITY)
            self.event("reevaluate", id=ind.id, reason=d.reason, parent=judged.parent, seeds=list(d.pairs))
            return []
        if d.action is Action.PAIR and self._ask_parent(judged.parent, ind.id, d.parent_seeds, d.reason):
            return []
        if d.action is Action.PAIR:  # the parent cannot run any more
            d = replace(d, action=Action.REJECT, reason=f"its parent {judged.parent} cannot be run on seed "
                        f"{','.join(map(str, d.parent_seeds))}")  # fmt: skip
        accepted = d.action is Action.ACCEPT
        score = ev.score(ind.id)
        self.store.set_decision(ind.id, "accept" if accepted else "reject")
        self.event("decision", id=ind.id, action=d.action.value, reason=d.reason,
                   mean=score.mean if score else None, parent=judged.parent, seeds=list(d.pairs),
                   diff=d.diff, t=d.t, accept_at=d.accept_at, reject_at=d.reject_at)  # fmt: skip
        ev = self._evidence()  # with the decision: the child may be a replicate now
        member = member_of(ev, ind.id, self.policy) if accepted else None
        if member is None:
            member = Member(id=ind.id, score=math.inf, island=ind.island, generation=ind.generation,
                            parents=ind.parents, description=ind.description)  # fmt: skip
        for move in self.strategy.on_evaluated(member, accepted):
            payload = {"member": move.member, "source": move.source, "target": move.target}
            self.event(MIGRATION_EVENT, **payload)
        if accepted:
            self._refresh_members(ev)
            self._confirm_top(ev)
        return [Outcome(child=ind, parents=ind.parents, score=score, accepted=accepted,
                        improvement=judged.improvement, failed=judged.failed)]  # fmt: skip

    def _ask_parent(
        self: Engine, parent: str | None, child: str, seeds: tuple[int, ...], reason: str
    ) -> bool:
        """Queue the parent for the seed a child waits for; False when it cannot be run."""
        row = self.store.get(parent) if parent else None
        if row is None or row.status in (Status.REJECTED, Status.PROPOSED):
            return False
        if row.status in (Status.EVALUATED, Status.FAILED):
            self.store.set_status(row.id, Status.QUEUED, priority=REEVAL_PRIORITY)
        self.event("pair", id=row.id, child=child, seeds=list(seeds), reason=reason)
        return True

    def _serviced(self: Engine, individual: str) -> list[Outcome]:
        """After a run of a decided individual: the children waiting for it, its confirmation."""
        outcomes: list[Outcome] = []
        ev = self._evidence()
        for child_id, child in ev.individuals.items():
            if (
                child.decision is None
                and child.status == Status.EVALUATED
                and ev.reference(child_id) == individual
            ):
                outcomes += self._promote(child_id)
        ev = self._evidence()
        c = confirm.get(self.store, individual, self.config.depth)
        if c is not None and c.status == confirm.PENDING:
            self._settle(c, ev)
        self._refresh_members(ev)
        self._confirm_top(ev)
        return outcomes

    def _settle(self: Engine, c: confirm.Confirmation, ev: Evidence) -> None:
        runs = ev.runs(c.individual)
        done = confirm.settle(self.store, c, ev.values(c.individual), {s: e.status for s, e in runs.items()})
        if done.status == confirm.PENDING:
            row = self.store.get(c.individual)
            if row is not None and row.status in (Status.EVALUATED, Status.FAILED):
                self.store.set_status(row.id, Status.QUEUED, priority=REEVAL_PRIORITY)
            return
        self.event("confirmed", id=done.individual, status=done.status, mean=done.mean, n=done.n,
                   seeds=done.seed_text, reason=done.reason)  # fmt: skip

    def _confirm_top(self: Engine, ev: Evidence) -> None:
        """Start the fresh-seed confirmation of the best elite by its bound, if it never had one."""
        if confirm.confirmations(self.store, self.run_name, self.config.depth, status=confirm.PENDING):
            return  # one at a time
        ranked = ev.ranked(self.policy, include_baseline=False)
        if not ranked:
            return
        top, bound = ranked[0]
        if confirm.get(self.store, top, self.config.depth) is not None:
            return
        first = max(self.store.seeds_used(top, self.config.depth), default=FIRST_SEED - 1) + 1
        c = confirm.start(self.store, self.run_name, top, self.config.depth, first, self.policy.confirm_seeds)
        row = self.store.get(top)
        if row is not None and row.status in (Status.EVALUATED, Status.FAILED):
            self.store.set_status(top, Status.QUEUED, priority=REEVAL_PRIORITY)
        self.event("confirm_start", id=top, seeds=c.seed_text, bound=bound,
                   reason=f"best elite by its bound {bound:.6f}: scored again on fresh seeds {c.seed_text}")  # fmt: skip

    def _refresh_members(self: Engine, ev: Evidence) -> None:
        """Members' scores (their bounds) move as they gather seeds and as the noise model changes."""
        if self.strategy is None:
            return
        members = [m for i in ev.accepted() if (m := member_of(ev, i, self.policy)) is not None]
        self.strategy.refresh(members)

    def _decide_undecided(self: Engine) -> None:
        """On resume: children evaluated but undecided (waiting for their parent's seed when the
        last session ended) are judged again, which asks for the parent's run if it is still
        missing; a pending confirmation is settled or its individual queued again."""
        outcomes: list[Outcome] = []
        for ind in self.store.individuals(self.run_name, status=(Status.EVALUATED, Status.FAILED)):
            if ind.parents and ind.decision is None:
                with self._change():
                    outcomes += self._promote(ind.id)
        with self._change():
            ev = self._evidence()
            for c in confirm.confirmations(
                self.store, self.run_name, self.config.depth, status=confirm.PENDING
            ):
                self._settle(c, ev)
            self._refresh_members(ev)
            self._confirm_top(ev)
        for outcome in outcomes:
            self._tell(outcome)
