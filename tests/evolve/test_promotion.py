"""Judging a child: scores, the replicate noise model, the paired sequential rule's cases, the bound."""

from __future__ import annotations

import math
import statistics

import pytest

from evolve.judging import Evidence
from evolve.promotion import (
    PAIRED_DOF,
    Action,
    NoiseModel,
    PromotionPolicy,
    Score,
    judge,
    paired_difference,
    pessimistic,
    pooled_std,
)
from evolve.sequential import boundaries
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
    groups = [[1.0, 1.2, 1.1], [2.0, 2.0 + 0.3 * 2**0.5], [5.0]]
    assert pooled_std(groups) == pytest.approx(((2 * 0.01 + 0.09) / 3) ** 0.5)


PARENT = {42: 1.000, 43: 1.010, 44: 0.990, 45: 1.005, 46: 0.995}  # sd 0.0079 over 5 seeds
MODEL = NoiseModel.build({"base": PARENT}, ["base"])
POLICY = PromotionPolicy()


def test_the_noise_model_comes_from_accepted_replicates_and_takes_sqrt2_sigma_until_pairs_are_enough():
    assert MODEL.sigma == pytest.approx(statistics.stdev(PARENT.values())) and MODEL.sigma_dof == 4
    assert MODEL.tau() == (pytest.approx(math.sqrt(2) * MODEL.sigma), 4) and not MODEL.paired
    # a rejected child re-run because its first seed looked lucky is no replicate
    lucky = {42: 0.95, 43: 1.02}
    assert NoiseModel.build({"base": PARENT, "lucky": lucky}, ["base"]).sigma == MODEL.sigma
    # accepted genomes on shared seeds measure the paired spread: what a seed does to all of them
    # (here 42 is 0.01 worse than 43 for everyone) is taken out
    values = {"base": PARENT}
    for i in range(PAIRED_DOF):
        values[f"c{i}"] = {42: PARENT[42] - 0.02 + 0.001 * i, 43: PARENT[43] - 0.02 - 0.001 * i}
    paired = NoiseModel.build(values, ["base", *values])
    # 7 genomes x 2 shared seeds: 14 runs - 7 genomes - 2 seeds + 1 group (seeds 44-46 fit exactly)
    assert paired.paired and paired.pair_dof == PAIRED_DOF and paired.pairs == PAIRED_DOF + 1
    assert paired.tau()[0] == pytest.approx(paired.pair_sd) and paired.pair_sd < math.sqrt(2) * paired.sigma
    d = [values[f"c{i}"][43] - values[f"c{i}"][42] - (PARENT[43] - PARENT[42]) for i in range(PAIRED_DOF)]
    # with two seeds the fit's residual variance is the variance of the contrast 43 - 42 around its mean, / 2
    contrast = [PARENT[43] - PARENT[42]] + [PARENT[43] - PARENT[42] + x for x in d]
    assert paired.pair_sd**2 == pytest.approx(2 * statistics.variance(contrast) / 2)
    assert "paired tau" in paired.describe() and "sqrt(2)" in MODEL.describe()
    assert NoiseModel.build({}, []).tau() is None


def test_the_issues_crash_case_is_rejected():
    # 2 crashed seeds and one run of 0.97 against a parent at 1.00 +- 0.01 (n=3): never a keep
    parent = {42: 0.99, 43: 1.00, 44: 1.01}
    model = NoiseModel.build({"p": parent}, ["p"])
    d = judge({42: None, 43: None, 44: 0.97}, parent, model, POLICY, failed={42: "crash", 43: "crash"})
    assert d.action is Action.REJECT and "seed 42 crash" in d.reason
    # a crash after a good seed rejects too: a child that fails on a seed is not kept
    assert judge({42: 0.90, 43: None}, parent, model, POLICY, failed={43: "diverged"}).action is Action.REJECT


def test_no_child_is_accepted_on_one_seed_and_a_clear_winner_is_accepted_on_two():
    one = judge({42: 0.90}, PARENT, MODEL, POLICY)  # 0.1 better: 9 tau
    assert one.action is Action.REEVALUATE and one.pairs == (42,)
    two = judge({42: 0.90, 43: 0.91}, PARENT, MODEL, POLICY)
    assert two.action is Action.ACCEPT and two.pairs == (42, 43) and two.t < two.accept_at
    assert two.diff == pytest.approx(-0.1) and "alpha 0.05" in two.reason


def test_a_clear_loser_stops_after_one_seed_and_a_no_change_child_mostly_too():
    worse = judge({42: 1.02}, PARENT, MODEL, POLICY)
    assert worse.action is Action.REJECT and worse.pairs == (42,) and worse.t > worse.reject_at
    same = judge({42: 1.000}, PARENT, MODEL, POLICY)
    assert same.action is Action.REJECT
    # one seed has no accept line: the reason says so rather than quote one that does not apply
    assert worse.accept_at is None and "(no accept before 2 seeds, reject at >= -0.59;" in worse.reason


def test_an_undecided_child_runs_up_to_max_seeds_and_is_rejected_there():
    tau = math.sqrt(2) * MODEL.sigma
    k_max = POLICY.max_seeds
    seeds = sorted(PARENT)[:k_max]
    b = boundaries(POLICY.design, MODEL.sigma_dof)
    # a mean gain between the lines at every look before the last, short of the accept line at the last
    lo = max(b.reject[k] / math.sqrt(k + 1) for k in range(k_max - 1))
    hi = min(b.accept[k] / math.sqrt(k + 1) for k in range(1, k_max))
    assert lo < hi
    gain = -(lo + hi) / 2 * tau  # looks better every time, never enough
    child = {seed: PARENT[seed] + gain for seed in seeds}
    for k in range(1, POLICY.max_seeds):
        d = judge({s_: child[s_] for s_ in seeds[:k]}, PARENT, MODEL, POLICY)
        assert d.action is Action.REEVALUATE, (k, d.reason)
    last = judge(child, PARENT, MODEL, POLICY)
    assert (
        last.action is Action.REJECT
        and "after its last seed (4)" in last.reason
        and last.reject_at == last.accept_at
    )


def test_the_parent_is_run_on_a_seed_it_lacks_and_a_failed_parent_seed_is_skipped():
    parent = {42: 1.0, 43: 1.01}
    d = judge({42: 0.99, 43: 0.99, 44: 0.98}, parent, MODEL, POLICY)
    assert d.action is Action.PAIR and d.parent_seeds == (44,)
    # the looks stop at the first seed the parent lacks: a clear loser needs no more pairs
    assert judge({42: 1.05, 44: 1.05}, {42: 1.0}, MODEL, POLICY).action is Action.REJECT
    skipped = judge({42: 0.90, 43: 0.91, 44: 0.90}, {42: 1.0, 43: None, 44: 1.0}, MODEL, POLICY)
    assert skipped.action is Action.ACCEPT and skipped.pairs == (42, 44)
    lost = {42: None, 43: None, 44: None}
    assert judge({42: 0.9, 43: 0.9, 44: 0.9}, lost, MODEL, POLICY).action is Action.REJECT


def test_decisions_replay_the_looks_in_seed_order():
    # extra seeds (an older engine gave them) do not change the look at which the test stops
    early = judge({42: 1.03}, PARENT, MODEL, POLICY)
    late = judge({42: 1.03, 43: 0.90, 44: 0.90}, PARENT, MODEL, POLICY)
    assert early.action is late.action is Action.REJECT and late.pairs == (42,)


def test_without_a_noise_model_nothing_is_accepted():
    d = judge({42: 0.5, 43: 0.5}, PARENT, NoiseModel.build({}, []), POLICY)
    assert d.action is Action.REJECT and "no noise model" in d.reason


def test_the_bound_ranks_a_mean_on_few_seeds_below_the_same_mean_on_many():
    few, many = Score(0.95, 0.01, 2), Score(0.95, 0.01, 8)
    assert pessimistic(few, MODEL) > pessimistic(many, MODEL) > 0.95
    assert pessimistic(s(0.95), NoiseModel.build({}, [])) == 0.95
    # a lucky mean on 2 seeds ranks below a slightly worse one on 8
    assert pessimistic(Score(0.945, 0.0, 2), MODEL) > pessimistic(Score(0.948, 0.0, 8), MODEL)


def test_paired_difference_uses_the_seeds_both_ran_ok():
    assert paired_difference({42: 0.9, 43: 0.8, 44: None}, {42: 1.0, 43: None, 44: 1.0}) == (
        pytest.approx(-0.1), 1,
    )  # fmt: skip
    assert paired_difference({42: 0.9}, {43: 1.0}) is None


def test_policy_settings_are_checked():
    policy = PromotionPolicy(baseline_seeds=5, max_seeds=3, alpha=0.01)
    assert policy.baseline_pending(2) == 3 and policy.baseline_pending(7) == 0
    assert policy.design.alpha == 0.01 and policy.design.max_seeds == 3 and policy.design.min_seeds == 2
    for bad in (
        dict(baseline_seeds=1),
        dict(max_seeds=1),
        dict(alpha=0.7),
        dict(futility=1.0),
        dict(confirm_seeds=0),
    ):
        with pytest.raises(ValueError):
            PromotionPolicy(**bad)


def test_evidence_reads_the_store_by_seed_with_failures_and_the_noise_key(tmp_path):
    store = Store(tmp_path / "evolve.db")
    store.add_run("r", strategy="population", profile="tiny")
    store.add_individual(id="base", run="r", commit="c")
    store.add_individual(id="kid", run="r", commit="k", parents=["base"])
    store.add_individual(id="lucky", run="r", commit="l", parents=["base"])

    def record(ind, seed, bpb, purpose, status="ok", gpu=""):
        store.record_evaluation(
            Evaluation(individual=ind, depth=4, budget=5, seed=seed, profile="tiny", status=status,
                       val_bpb=bpb if status == "ok" else None, purpose=purpose, gpu_name=gpu)
        )  # fmt: skip

    for seed, bpb in zip(range(42, 47), PARENT.values(), strict=True):
        record("base", seed, bpb, "baseline")
    record("lucky", 42, 0.95, "search")
    record("lucky", 43, 1.05, "reeval")
    store.set_decision("base", "accept")
    store.set_decision("lucky", "reject")
    record("kid", 42, 0.90, "search")
    record("kid", 43, None, "reeval", status="diverged")
    ev = Evidence(store, "r", 4)
    assert ev.values("kid") == {42: 0.90, 43: None} and ev.reference("kid") == "base"
    assert ev.model().sigma == pytest.approx(MODEL.sigma)  # the lucky re-run is no replicate
    assert ev.main_key().kind == "cpu" and ev.main_key().budget == 5
    judged = ev.judge("kid", POLICY)
    assert (
        judged.decision.action is Action.REJECT
        and judged.failed
        and "seed 43 diverged" in judged.decision.reason
    )
    assert judged.improvement == pytest.approx(0.90 - PARENT[42])
    # a run on another GPU kind with no replicate of its own borrows every kind's noise
    store.add_individual(id="gpu", run="r", commit="g", parents=["base"])
    record("gpu", 42, 0.90, "search", gpu="H200")
    model, note = Evidence(store, "r", 4).model_for("gpu")
    assert model.sigma == pytest.approx(MODEL.sigma) and "no replicate on H200" in note
    store.close()


def test_the_rule_in_words_states_the_gains_judge_accepts_at():
    # What the LLM prompts are told (`describe_rule`) is what `judge` does: a child whose mean
    # paired gain over two seeds is the stated one (a hair more) is kept, a hair less is not.
    text = POLICY.describe(MODEL)
    need = float(text.split("a mean gain of at least ")[1].split(" val_bpb over 2 seeds")[0])
    assert "alpha 0.05" in text and "over 4 seeds" in text and "3 fresh seeds" in text
    for margin, kept in ((1.01, True), (0.99, False)):  # the text rounds to 4 decimals
        gain = need * margin
        child = {42: PARENT[42] - gain * 0.9, 43: PARENT[43] - gain * 1.1}
        d = judge(child, PARENT, MODEL, POLICY)
        assert (d.action is Action.ACCEPT) is kept, (margin, d.reason)
    # after one seed a child not ahead by the stated amount is dropped at once
    first = float(text.split("after one seed it must be ahead by ")[1].split(" ")[0])
    assert judge({42: PARENT[42] - first * 0.98}, PARENT, MODEL, POLICY).action is Action.REJECT
    assert judge({42: PARENT[42] - first * 1.02}, PARENT, MODEL, POLICY).action is Action.REEVALUATE
    assert "not measured yet" in POLICY.describe(None) and "not measured yet" in POLICY.describe(
        NoiseModel.build({}, [])
    )
