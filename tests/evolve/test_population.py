"""Parent selection, islands, elites, migration, the ratchet strategy, and rebuilding from the store."""

from __future__ import annotations

from collections import Counter

import pytest

from evolve.errors import EvolveError
from evolve.population import (
    MIGRATION_EVENT,
    Member,
    Population,
    Ratchet,
    from_store,
    make_strategy,
    parent_weights,
)
from evolve.promotion import Action, NoiseModel, PromotionPolicy, judge
from evolve.store import Evaluation, Store

BASE = Member("base", 1.00)


def ladder(n: int, island: int = 0) -> list[Member]:
    """n members of one island, m0 the best."""
    return [Member(f"m{i}", 0.90 + i / 100, island=island, parents=("base",)) for i in range(n)]


def test_weights_follow_a_rank_power_law_divided_by_the_children_penalty():
    members = ladder(3)[::-1]  # input order must not matter
    w = dict(zip([m.id for m in members], parent_weights(members, {}, alpha=1.0, penalty_k=4), strict=True))
    assert w == pytest.approx({"m0": 1.0, "m1": 1 / 2, "m2": 1 / 3})
    w = parent_weights(ladder(3), {"m0": 4}, alpha=2.0, penalty_k=4)
    assert w == pytest.approx([1 / 2, 1 / 4, 1 / 9])


def test_the_best_parent_is_drawn_most_and_frequency_falls_with_rank():
    pop = Population(islands=1, seed=1, members=ladder(5))
    counts = Counter(pop.select_parent().id for _ in range(3000))
    freq = [counts[f"m{i}"] for i in range(5)]
    assert freq == sorted(freq, reverse=True) and freq[0] > 0.3 * 3000
    assert freq[4] > 0  # biased to elites, but not only elites
    # every draw counted a child, so the heavy use is visible to later draws
    assert sum(pop.children(f"m{i}") for i in range(5)) == 3000


def test_a_parent_with_many_children_is_chosen_less():
    fresh = Population(islands=1, seed=3, members=ladder(4))
    used = Population(islands=1, seed=3, members=[Member(**{**m.__dict__, "children": 40}) if m.id == "m0" else m
                                                  for m in ladder(4)])  # fmt: skip
    assert used.probabilities(0)["m0"] < fresh.probabilities(0)["m0"] / 5
    fresh_m0 = sum(fresh.select_parent().id == "m0" for _ in range(40))
    used_m0 = sum(used.select_parent().id == "m0" for _ in range(40))
    assert used_m0 < fresh_m0 / 2


def test_draws_are_deterministic_for_a_seed():
    def draws(seed):
        pop = Population(islands=2, seed=seed, members=[BASE, *ladder(3, 0), *ladder(2, 1)[::-1]])
        out = [(p.id, p.island) for p in (pop.select_parent() for _ in range(50))]
        out += [tuple(m.id for m in pop.select_pair()) for _ in range(20)]
        return out

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_islands_seed_from_the_baseline_and_take_turns():
    pop = Population(islands=3, seed=0, members=[BASE])
    assert [len(pop.members(i)) for i in range(3)] == [1, 1, 1]
    assert [pop.select_parent().island for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    pop.on_evaluated(Member("a", 0.95, island=1, parents=("base",)), accepted=True)
    pop.on_evaluated(Member("b", 1.05, island=2, parents=("base",)), accepted=False)
    assert [m.id for m in pop.members(1)] == ["a", "base"]
    assert [m.id for m in pop.members(2)] == ["base"]  # a rejected child is not a member
    assert pop.select_parent(island=1).island == 1
    with pytest.raises(EvolveError, match="empty"):
        Population(islands=2).select_parent()


def test_elites_per_island_and_overall():
    pop = Population(islands=2, members=[BASE, *ladder(3, 0), Member("x", 0.85, island=1, parents=("base",))])
    assert [m.id for m in pop.elites(2, island=0)] == ["m0", "m1"]
    assert [m.id for m in pop.elites(2, island=1)] == ["x", "base"]
    assert [m.id for m in pop.elites(3)] == ["x", "m0", "m1"]
    assert pop.best().id == "x" and len(pop) == 5


def test_each_islands_best_migrates_to_the_next_island_every_m_evaluations():
    pop = Population(islands=3, migrate_every=2, seed=0, members=[BASE])
    assert pop.on_evaluated(Member("a", 0.90, island=0, parents=("base",)), True) == []
    moves = pop.on_evaluated(Member("b", 0.80, island=1, parents=("base",)), True)
    # a (best of 0) -> 1 and b (best of 1) -> 2; island 2's best is base, already in island 0
    assert {(m.member, m.source, m.target) for m in moves} == {("a", 0, 1), ("b", 1, 2)}
    assert [m.id for m in pop.members(1)] == ["b", "a", "base"]
    assert [m.id for m in pop.members(2)] == ["b", "base"]
    assert [m.id for m in pop.members(0)] == ["a", "base"]  # from a snapshot: b did not travel twice
    assert pop.on_evaluated(Member("c", 1.1, island=2, parents=("base",)), False) == []


def test_select_pair_gives_two_distinct_parents_or_none():
    assert Population(islands=2, members=[BASE]).select_pair() is None
    pop = Population(islands=2, seed=5, members=[BASE, Member("a", 0.9, island=0, parents=("base",))])
    for _ in range(30):
        first, second = pop.select_pair(island=1)  # island 1 only has base: partner from anywhere
        assert {first.id, second.id} == {"base", "a"} and first.island == second.island == 1


def test_ratchet_keeps_only_improvements_and_goes_back_to_the_last_kept():
    chain = make_strategy("ratchet", islands=4, seed=0)  # population options are ignored
    chain.add(BASE)
    assert chain.select_parent().id == "base" and chain.select_pair() is None
    chain.on_evaluated(Member("a", 0.95, parents=("base",)), accepted=True)
    assert chain.select_parent().id == "a"
    chain.on_evaluated(Member("b", 0.97, parents=("a",)), accepted=False)
    assert chain.select_parent().id == "a"  # discarded: back to the last kept
    # two children of `a` ran at once; both beat `a`, the better one is kept, the other is not
    chain.on_evaluated(Member("c", 0.90, parents=("a",)), accepted=True)
    chain.on_evaluated(Member("d", 0.93, parents=("a",)), accepted=True)
    assert chain.select_parent().id == "c"
    assert [m.id for m in chain.kept] == ["base", "a", "c"]
    assert [m.id for m in chain.members()] == ["c"] and chain.children("a") == 2


def test_ratchet_driven_by_the_paired_test_reproduces_keep_if_better():
    chain = Ratchet(members=[BASE])
    runs = {"base": {42: 1.00, 43: 1.01, 44: 0.99}}
    model = NoiseModel.build(runs, ["base"])  # sigma 0.01
    # each child: its parent's runs shifted by a true change, on the same seeds
    for cid, change in [("a", +0.02), ("b", -0.05), ("c", +0.01), ("d", -0.06)]:
        parent = chain.select_parent()
        runs[cid] = {seed: v + change for seed, v in runs[parent.id].items()}
        child: dict[int, float | None] = {}
        for seed in sorted(runs[cid]):
            child[seed] = runs[cid][seed]
            verdict = judge(child, runs[parent.id], model, PromotionPolicy())
            if verdict.action is not Action.REEVALUATE:
                break
        chain.on_evaluated(Member(cid, sum(runs[cid].values()) / 3, parents=(parent.id,)),
                           verdict.action is Action.ACCEPT)  # fmt: skip
    assert [m.id for m in chain.kept] == ["base", "b", "d"]


def test_unknown_strategy_is_a_user_error():
    with pytest.raises(EvolveError, match="population, ratchet"):
        make_strategy("annealing")


def test_rebuilt_from_the_store_with_children_counts_and_migrations(tmp_path):
    store = Store(tmp_path / "evolve.db")
    store.add_run("r", strategy="population", profile="tiny")

    def add(cid, parents, island, bpbs, decision):
        store.add_individual(id=cid, run="r", commit=cid, parents=parents, island=island, operator="mutate")
        for seed, bpb in enumerate(bpbs):
            store.record_evaluation(
                Evaluation(
                    individual=cid, depth=4, budget=5, seed=seed, profile="tiny", status="ok", val_bpb=bpb
                )
            )
        if decision:
            store.set_decision(cid, decision)

    add("base", (), 0, [1.0, 1.02, 0.98], "accept")
    add("a", ("base",), 0, [0.9, 0.92], "accept")
    add("b", ("base",), 1, [1.1], "reject")
    add("c", ("a",), 1, [0.95], "accept")
    store.add_individual(id="d", run="r", commit="d", parents=("a",), status="queued")  # in flight
    store.add_event(MIGRATION_EVENT, {"member": "a", "source": 0, "target": 1}, run="r")

    pop = from_store(store, "r", 4, "population", islands=2, seed=0)
    assert [m.id for m in pop.members(0)] == ["a", "base"]
    assert [m.id for m in pop.members(1)] == ["a", "c", "base"]
    a = pop.members(0)[0]
    assert (a.n, a.mean, pop.children("a")) == (2, pytest.approx(0.91), 2)
    assert a.score > a.mean  # ranked by its bound: the mean plus a margin for its two seeds
    assert pop.evaluations == 3
    folded = from_store(store, "r", 4, "population", islands=1)  # resumed with fewer islands
    assert [m.id for m in folded.members(0)] == ["a", "c", "base"]
    chain = from_store(store, "r", 4, "ratchet")
    assert chain.select_parent().id == "c"  # accepted as better than a, the chain's current then
