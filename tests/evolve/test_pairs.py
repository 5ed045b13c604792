"""Pairs worth crossing: ancestry, the parents the engine picks, partner ranking, what a child took."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from evolve.operators import Parent, ProposalContext
from evolve.pairs import Family, changes, choose_parents, rank_partners, took
from evolve.population import Member
from evolve.store import Evaluation, Purpose, Status, Store
from genome.hyperparams import commit_hyperparams
from genome.workspace import init_workspace

BIGRAM = Path(__file__).parent / "data" / "train_bigram.py"
BASE = """LR = 0.1
DIM = 32


def f(x):
    return x * LR


def g(x):
    return x + DIM
"""


class Tree:
    """A real workspace and store; children recorded with scores (no training)."""

    def __init__(self, root: Path):
        self.ws = init_workspace(root / "ws", run="p", profile="tiny", train_py=BIGRAM)
        self.repo = self.ws.repo()
        self.store = Store(self.ws.state_dir / "evolve.db")
        self.store.add_run("p", strategy="population", profile="tiny")
        base = self.repo.baseline()
        self.store.add_individual(
            id=base.id, run="p", commit=base.commit, operator="baseline", status="queued"
        )
        self.score(base.id, 3.80)

    def score(self, ind: str, value: float) -> None:
        self.store.set_status(ind, Status.RUNNING)
        purpose = Purpose.BASELINE if ind == "g0000" else Purpose.SEARCH
        self.store.record_evaluation(Evaluation(ind, 2, 3.0, 42, "tiny", "ok", purpose, val_bpb=value))

    def child(self, parent: str, values: dict, score: float) -> str:
        genome = commit_hyperparams(self.repo, self.repo.get(parent), values, operator="optuna_tweak")
        self.store.add_individual(id=genome.id, run="p", commit=genome.commit, parents=genome.parents,
                                  operator="optuna_tweak", status="queued")  # fmt: skip
        self.score(genome.id, score)
        return genome.id

    def context(self, first: str, *others: str) -> ProposalContext:
        scores = self.store.scores(2, "p")
        parent = lambda i: Parent(self.store.get(i), scores.get(i))
        return ProposalContext(
            repo=self.repo, store=self.store, run="p", settings=self.ws.settings,
            parents=(parent(first), parent(others[0])), island=0, depth=2, rng=random.Random(0),
            noise_floor=None, elites=tuple(parent(o) for o in others[1:]),
        )  # fmt: skip


@pytest.fixture
def tree(tmp_path):
    t = Tree(tmp_path)
    yield t
    t.store.close()


def test_ancestry_comes_from_the_store_and_a_pair_needs_two_unrelated_members(tree):
    a = tree.child("g0000", {"EMB_LR": 0.01}, 3.70)
    aa = tree.child(a, {"HEAD_LR": 0.01}, 3.60)
    family = Family.of(tree.store, "p")
    assert family.ancestors(aa) == {a, "g0000"} and family.related(aa, "g0000") and family.related(a, a)
    assert family.unrelated_pair(["g0000", a, aa]) is None  # one line of descent: nothing to cross
    b = tree.child("g0000", {"BETA1": 0.8}, 3.75)
    family = Family.of(tree.store, "p")
    assert family.unrelated_pair(["g0000", a, aa, b]) == (a, b)


def test_the_engine_replaces_a_related_draw_by_an_unrelated_pair_better_first(tree):
    a = tree.child("g0000", {"EMB_LR": 0.01}, 3.70)
    aa = tree.child(a, {"HEAD_LR": 0.01}, 3.60)
    b = tree.child("g0000", {"BETA1": 0.8}, 3.75)
    members = [Member(aa, 3.60, 1), Member(a, 3.70, 1), Member(b, 3.75, 2), Member("g0000", 3.80, 0)]
    family = Family.of(tree.store, "p")
    first, second, partners = choose_parents(family, members, (Member(aa, 3.6, 1), Member(a, 3.7, 1)))
    assert (first.id, second.id) == (aa, b) and second.island == 1  # the draw's island: the child's
    assert partners == []  # every other member is an ancestor of aa
    assert choose_parents(family, members[1::2], (members[1], members[3])) is None  # a and g0000 only


def test_changes_tell_knobs_from_code_regions():
    child = BASE.replace("LR = 0.1", "LR = 0.2").replace("return x + DIM", "return x - DIM")
    found = changes({"train.py": BASE}, {"train.py": child})
    assert found.knobs == {"LR": ("0.1", "0.2")}
    assert found.regions == (("train.py", 9, 9),)  # the line of g's body, 0-based
    other = changes({"train.py": BASE}, {"train.py": BASE.replace("return x * LR", "return x * LR * 2")})
    assert not found.overlaps(other) and found.overlaps(found)


def test_a_complementary_partner_comes_first(tree):
    a = tree.child("g0000", {"EMB_LR": 0.01}, 3.70)
    same_knob = tree.child("g0000", {"EMB_LR": 0.03}, 3.72)  # overlaps a: tier 2
    worse = tree.child("g0000", {"BETA1": 0.8}, 3.85)  # different knob, worse than the base: tier 1
    good = tree.child("g0000", {"HEAD_LR": 0.02}, 3.78)  # different knob, better: tier 0
    descendant = tree.child(a, {"DIM": 64}, 3.65)  # related: never a partner
    ctx = tree.context(a, same_knob, worse, descendant, good)
    ranked = rank_partners(ctx, ctx.parents[0], [*ctx.parents[1:], *ctx.elites])
    assert [(m.partner.id, m.tier) for m in ranked] == [(good, 0), (worse, 1), (same_knob, 2)]
    assert ranked[0].base_id == "g0000" and ranked[0].both_better


def test_took_credits_each_change_to_the_parent_that_has_it():
    left = BASE.replace("LR = 0.1", "LR = 0.2")
    right = BASE.replace("return x + DIM", "return x - DIM")
    child = left.replace("return x + DIM", "return x - DIM").replace("DIM = 32", "DIM = 48")
    text = took({"t.py": BASE}, [("g1", {"t.py": left}), ("g2", {"t.py": right})], {"t.py": child})
    assert text == "from g1: t.py:LR=0.2; from g2: code (1 hunk); new: t.py:DIM=48"
    nothing = took({"train.py": BASE}, [("g1", {"train.py": left}), ("g2", {"train.py": right})],
                   {"train.py": left})  # fmt: skip
    assert nothing == "from g1: LR=0.2; from g2: nothing"


def test_a_partner_already_crossed_with_the_first_parent_goes_after_a_fresh_one(tree):
    a = tree.child("g0000", {"EMB_LR": 0.01}, 3.70)
    b = tree.child("g0000", {"HEAD_LR": 0.02}, 3.75)
    c = tree.child("g0000", {"BETA1": 0.8}, 3.78)
    ctx = tree.context(a, b, c)
    assert [m.partner.id for m in rank_partners(ctx, ctx.parents[0], [*ctx.parents[1:], *ctx.elites])] == [
        b,
        c,
    ]
    merged = tree.repo.commit_child([tree.repo.get(a), tree.repo.get(b)], {}, "a with b", "merge_crossover")
    tree.store.add_individual(id=merged.id, run="p", commit=merged.commit, parents=(a, b), status="queued")
    ranked = rank_partners(ctx, ctx.parents[0], [*ctx.parents[1:], *ctx.elites])
    assert [(m.partner.id, m.crossed) for m in ranked] == [(c, 0), (b, 1)]
