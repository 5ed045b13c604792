"""Noise-aware promotion: scores over seeds, the pooled noise floor, and the decision rule's cases."""

from __future__ import annotations

import statistics

import pytest

from evolve.promotion import Action, PromotionPolicy, Score, decide, pooled_std
from evolve.store import Evaluation, Store


def s(*values: float) -> Score:
    return Score.of(values)


def test_score_is_mean_sample_std_and_count():
    score = s(1.0, 1.2, 1.1)
    assert score.mean == pytest.approx(1.1) and score.n == 3
    assert score.std == pytest.approx(statistics.stdev([1.0, 1.2, 1.1]))
    assert s(0.9).std == 0.0
    assert str(score) == "1.100000 ± 0.100000 (n=3)"
    with pytest.raises(ValueError):
        Score.of([])


def test_pooled_std_weights_groups_by_degrees_of_freedom_and_skips_singletons():
    assert pooled_std([[1.0], [2.0]]) is None
    assert pooled_std([[1.0, 1.2, 1.1]]) == pytest.approx(0.1)
    # (2 * 0.1^2 + 1 * 0.3^2) / 3 pooled, the singleton ignored
    groups = [[1.0, 1.2, 1.1], [2.0, 2.0 + 0.3 * 2**0.5], [5.0]]
    assert pooled_std(groups) == pytest.approx(((2 * 0.01 + 0.09) / 3) ** 0.5)


FLOOR = 0.01


def test_a_child_clearly_worse_than_its_parent_is_rejected_after_one_seed():
    d = decide(s(1.10), parent=s(1.00, 1.00), best=s(0.95, 0.95, 0.95), floor=FLOOR)
    assert d.action == Action.REJECT and "does not beat" in d.reason


def test_a_clear_win_that_is_not_a_new_best_is_accepted_after_one_seed():
    # beats the parent by 0.03 >= 2 x 0.01, but 0.97 is not below the best 0.95
    d = decide(s(0.97), parent=s(1.00), best=s(0.95, 0.95, 0.95), floor=FLOOR)
    assert d.action == Action.ACCEPT


def test_a_narrow_win_over_the_parent_is_reevaluated_until_max_seeds():
    parent, best = s(1.00, 1.00), s(0.95, 0.95, 0.95)
    narrow = decide(s(0.99), parent, best, FLOOR)  # 0.01 < 2 x floor
    assert narrow.action == Action.REEVALUATE and "2 x floor" in narrow.reason
    assert decide(s(0.99, 0.985), parent, best, FLOOR).action == Action.REEVALUATE
    # with three seeds the mean decides: still below the parent -> accepted
    assert decide(s(0.99, 0.985, 0.995), parent, best, FLOOR).action == Action.ACCEPT
    # the extra seeds may also reveal it was noise
    assert decide(s(0.99, 1.01, 1.02), parent, best, FLOOR).action == Action.REJECT


def test_a_would_be_champion_is_reevaluated_even_when_the_win_is_large():
    parent = best = s(1.00, 1.00, 1.00)
    d = decide(s(0.80), parent, best, FLOOR)
    assert d.action == Action.REEVALUATE and "would become the best" in d.reason
    assert decide(s(0.80, 0.81, 0.79), parent, best, FLOOR).action == Action.ACCEPT


def test_margin_and_max_seeds_are_settings():
    parent, best = s(1.00), s(0.90, 0.90, 0.90)
    child = s(0.975)  # beats the parent by 0.025
    assert decide(child, parent, best, FLOOR).action == Action.ACCEPT  # 0.025 >= 2 x 0.01
    assert decide(child, parent, best, FLOOR, margin=3).action == Action.REEVALUATE
    assert decide(s(0.80), parent, best, FLOOR, max_seeds=1).action == Action.ACCEPT
    policy = PromotionPolicy(baseline_seeds=5, max_seeds=2, margin=3)
    assert policy.baseline_pending(2) == 3 and policy.baseline_pending(7) == 0
    assert policy.decide(child, parent, best, FLOOR).action == Action.REEVALUATE
    assert policy.decide(s(0.975, 0.975), parent, best, FLOOR).action == Action.ACCEPT
    with pytest.raises(ValueError):
        PromotionPolicy(max_seeds=0)


def test_unknown_floor_counts_as_zero_and_missing_parent_compares_with_best():
    # no floor yet: a narrow win is accepted, a would-be champion still needs seeds
    assert decide(s(0.999), s(1.00), s(0.90), None).action == Action.ACCEPT
    assert decide(s(0.85), s(1.00), s(0.90), None).action == Action.REEVALUATE
    assert decide(s(1.2), None, s(1.0), FLOOR).action == Action.REJECT
    assert decide(s(1.2), None, None, FLOOR).action == Action.ACCEPT


def test_noise_floor_from_the_store_tightens_as_reevaluations_come_in(tmp_path):
    store = Store(tmp_path / "evolve.db")
    store.add_run("r", strategy="population", profile="tiny")
    store.add_individual(id="base", run="r", commit="c")
    store.add_individual(id="kid", run="r", commit="k", parents=["base"])

    def record(ind, seed, bpb, purpose):
        store.record_evaluation(
            Evaluation(individual=ind, depth=4, budget=5, seed=seed, profile="tiny", status="ok",
                       val_bpb=bpb, purpose=purpose)
        )  # fmt: skip

    for seed, bpb in enumerate([1.00, 1.04, 1.02]):
        record("base", seed, bpb, "baseline")
    floor = store.noise_floor(4, "r")
    assert floor == pytest.approx(0.02)
    record("kid", 10, 0.99, "search")
    scores = store.scores(4, "r")
    # beats the baseline's 1.02 by 0.03 < 2 x 0.02 and would be the best: another seed
    d = decide(scores["kid"], scores["base"], scores["base"], floor)
    assert d.action == Action.REEVALUATE
    record("kid", 11, 0.99, "reeval")
    assert store.noise_floor(4, "r") < floor  # a second, tight group joins the pool
