"""Operators: the contract every registered operator meets, the Optuna tweak, merge crossover, weights."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest

from evolve.errors import EvolveError
from evolve.operators import (
    Operator,
    OperatorError,
    OperatorSetup,
    Outcome,
    Parent,
    ProposalContext,
    available,
    make_operator,
    optuna_tweak,
)
from evolve.operators.optuna_tweak import PENALTY, OptunaTweak, lineage_key, space_for
from evolve.operators.weights import PROPOSAL_FAILED, Credit, OperatorWeights, credits_from_store
from evolve.promotion import Score
from evolve.store import Evaluation, LineageKind, Purpose, Status, Store
from genome.edits import Block, Edit
from genome.hyperparams import commit_hyperparams, parse_hyperparams
from genome.repo import git_process
from genome.workspace import init_workspace

BIGRAM = Path(__file__).parent / "data" / "train_bigram.py"
KNOBS = ["EMB_LR", "HEAD_LR", "INIT_STD", "BETA1"]


class World:
    """A real workspace and store: the baseline and children recorded with scores, no training."""

    def __init__(self, root: Path):
        self.ws = init_workspace(
            root / "ws", run="ops", profile="tiny", islands=2, budget=81920, train_py=BIGRAM
        )
        self.repo = self.ws.repo()
        self.store = Store(self.ws.state_dir / "evolve.db")
        self.store.add_run("ops", strategy="population", profile="tiny")
        base = self.repo.baseline()
        self.store.add_individual(id=base.id, run="ops", commit=base.commit, branch=base.branch,
                                  operator="baseline", status=Status.QUEUED)  # fmt: skip
        self.score(base.id, 3.80, decision="accept")

    def score(self, ind_id: str, *values: float, decision: str | None = None) -> None:
        self.store.set_status(ind_id, Status.RUNNING)
        for k, v in enumerate(values):
            purpose = Purpose.BASELINE if ind_id == "g0000" else Purpose.SEARCH
            self.store.record_evaluation(Evaluation(ind_id, 2, 3.0, 42 + k, "tiny", "ok", purpose, val_bpb=v))
        if decision:
            self.store.set_decision(ind_id, decision)

    def child(
        self, parent: str, values: dict, score: float | None = None, decision: str | None = "accept"
    ) -> str:
        genome = commit_hyperparams(self.repo, self.repo.get(parent), values, operator="optuna_tweak")
        self.store.add_individual(id=genome.id, run="ops", commit=genome.commit, branch=genome.branch,
                                  parents=genome.parents, operator="optuna_tweak", status=Status.QUEUED)  # fmt: skip
        if score is not None:
            self.score(genome.id, score, decision=decision)
        return genome.id

    def code_child(self, parent: str, search: str, replace: str, score: float) -> str:
        genome = self.repo.apply_edit(
            self.repo.get(parent), Edit("code change", blocks=(Block(search, replace),))
        )
        self.store.add_individual(id=genome.id, run="ops", commit=genome.commit, branch=genome.branch,
                                  parents=genome.parents, operator="llm_mutation", status=Status.QUEUED)  # fmt: skip
        self.score(genome.id, score, decision="accept")
        return genome.id

    def parent(self, ind_id: str) -> Parent:
        return Parent(self.store.get(ind_id), self.store.scores(2, "ops").get(ind_id))

    def setup(self, name: str, **options) -> OperatorSetup:
        return OperatorSetup(root=self.ws.root, state_dir=self.ws.state_dir, run="ops", settings=self.ws.settings,
                             store=self.store, depth=2, options=options)  # fmt: skip

    def context(self, *parents: str, elites: tuple[str, ...] = (), seed: int = 0) -> ProposalContext:
        return ProposalContext(
            repo=self.repo, store=self.store, run="ops", settings=self.ws.settings,
            parents=tuple(self.parent(p) for p in parents), island=0, depth=2, rng=random.Random(seed),
            noise_floor=0.001, elites=tuple(self.parent(e) for e in elites),
        )  # fmt: skip


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


# --- the contract, against every registered operator ----------------------------------------------


@pytest.mark.parametrize("name", available())
def test_every_operator_commits_a_child_of_its_parents_or_raises_operator_error(world, name):
    a = world.child("g0000", {"EMB_LR": 0.01}, 3.70)
    b = world.child("g0000", {"HEAD_LR": 0.01}, 3.72)
    try:
        op = make_operator(name, world.setup(name))
    except EvolveError as exc:  # e.g. an LLM operator without an endpoint configured
        pytest.skip(f"{name} cannot be built here: {exc}")
    assert isinstance(op, Operator) and op.name == name and op.arity in (1, 2)
    parents = ("g0000",) if op.arity == 1 else (a, b)
    before = {g.id for g in world.repo.genomes()}
    try:
        try:
            proposal = op.propose(world.context(*parents, elites=("g0000", a, b)))
        except OperatorError as exc:
            assert str(exc) and "\n" not in str(exc)  # one line, recorded as a failed proposal
            assert {g.id for g in world.repo.genomes()} == before
            return
        child = proposal.genome
        assert child.id not in before and world.repo.get(child.id).commit == child.commit
        assert child.operator == name and set(child.parents) <= {"g0000", a, b}
        assert len(child.parents) == op.arity
        assert world.repo.read(child) not in {world.repo.read(world.repo.get(p)) for p in child.parents}
        # a one-parent context for a two-parent operator (and vice versa) is refused, not a crash
        wrong = (a, b) if op.arity == 1 else ("g0000",)
        with pytest.raises(OperatorError):
            op.propose(world.context(*wrong))
    finally:
        op.close()


# --- the Optuna tweak -------------------------------------------------------------------------------


def test_search_ranges_follow_the_kind_of_each_constant():
    assert space_for("MATRIX_LR", 0.04) == {"kind": "float", "low": 0.01, "high": 0.16, "log": True}
    assert space_for("ROPE_BASE", 10000.0)["log"] is True
    assert space_for("WARMDOWN_FRAC", 0.5) == {"kind": "float", "low": 0.25, "high": 0.75, "log": False}
    assert space_for("WARMUP_FRAC", 0.0)["low"] == 0.0
    assert space_for("DEVICE_BATCH_SIZE", 64) == {"kind": "choice", "choices": [32, 64, 128]}
    assert space_for("NS_STEPS", 5) == {"kind": "int", "low": 2, "high": 10, "log": False}
    assert space_for("COMPILE", True) == {"kind": "choice", "choices": [False, True]}
    assert space_for("WINDOW_PATTERN", "L") is None and space_for("ADAM_BETAS", (0.8, 0.95)) is None


def test_optuna_tweak_changes_only_included_constants_and_learns_from_real_results(world):
    op = OptunaTweak(world.setup("optuna_tweak", include=["EMB_LR", "HEAD_LR"], max_changes=2))
    base_src = world.repo.read(world.repo.baseline())
    base_knobs = parse_hyperparams(base_src)
    children = []
    for seed in range(6):
        proposal = op.propose(world.context("g0000", seed=seed))
        child = proposal.genome
        assert child.operator == "optuna_tweak" and child.parents == ("g0000",)
        knobs = parse_hyperparams(world.repo.read(child))
        changed = {k for k in knobs if knobs[k].value != base_knobs[k].value}
        assert changed and changed <= {"EMB_LR", "HEAD_LR"} and len(changed) <= 2
        for k in changed:  # within the log range around the value the study opened with
            assert base_knobs[k].value / 4 <= knobs[k].value <= base_knobs[k].value * 4
        assert child.description.startswith(next(iter(sorted(changed))) if len(changed) == 1 else "")
        children.append((child.id, proposal.notes))
    # Every child of this lineage lands in one study, stored where optuna-dashboard can open it.
    studies = {notes["study"] for _, notes in children}
    assert len(studies) == 1
    storage = f"sqlite:///{world.ws.state_dir / 'optuna.db'}"
    study = optuna.load_study(study_name=studies.pop(), storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING] * 6
    # every trial holds the child's whole vector: the knob it kept is the parent's value
    for t in study.trials:
        child_knobs = parse_hyperparams(world.repo.read(world.repo.get(t.user_attrs["child"])))
        # (a suggested value is written to the child to 4 significant digits)
        assert t.params == pytest.approx({k: child_knobs[k].value for k in ("EMB_LR", "HEAD_LR")}, rel=1e-3)
        assert set(t.user_attrs["changed"]) <= {"EMB_LR", "HEAD_LR"} and t.user_attrs["parent"] == "g0000"
    # tell: the paired improvement over the parent completes the trial; a crashed child is told a
    # penalty worse than every real value; a child never trained fails its trial
    first, second, third = children[0][0], children[1][0], children[2][0]
    world.store.add_individual(id=first, run="ops", commit=world.repo.get(first).commit, parents=("g0000",),
                               operator="optuna_tweak", status=Status.QUEUED)  # fmt: skip
    world.score(first, 3.75, 3.77, decision="accept")
    op.on_outcome(
        Outcome(world.store.get(first), ("g0000",), Score.of([3.75, 3.77]), True, improvement=-0.05)
    )
    world.store.add_individual(id=second, run="ops", commit=world.repo.get(second).commit, parents=("g0000",),
                               operator="optuna_tweak", status=Status.FAILED)  # fmt: skip
    op.on_outcome(Outcome(world.store.get(second), ("g0000",), None, False, failed=True))
    world.store.add_individual(id=third, run="ops", commit=world.repo.get(third).commit, parents=("g0000",),
                               operator="optuna_tweak", status=Status.REJECTED)  # fmt: skip
    op.on_outcome(Outcome(world.store.get(third), ("g0000",), None, False))
    op.close()
    trials = {
        t.user_attrs["child"]: t
        for t in optuna.load_study(study_name=study.study_name, storage=storage).trials
    }
    assert trials[first].state == optuna.trial.TrialState.COMPLETE and trials[first].value == pytest.approx(
        -0.05
    )
    assert trials[second].state == optuna.trial.TrialState.COMPLETE and trials[second].value == PENALTY
    assert trials[second].user_attrs["penalty"] is True
    assert trials[third].state == optuna.trial.TrialState.FAIL
    assert trials[children[3][0]].state == optuna.trial.TrialState.RUNNING


def test_optuna_tweak_hands_the_search_space_on_and_suggests_what_a_fresh_sampler_would(world):
    # Each proposal gets a sampler of its own seed; it takes over the last one's search space (the
    # intersection over finished trials, read incrementally) instead of reading every trial again.
    op = OptunaTweak(world.setup("optuna_tweak", include=["EMB_LR"]))

    def ask(study):
        t = study.ask()
        return t, (t.suggest_float("a", 0.01, 1.0, log=True), t.suggest_int("b", 1, 8))

    study = op._study("s", seed=1)
    for _ in range(12):
        t, (a, b) = ask(study)
        study.tell(t, a * b)
    cache = study.sampler._search_space
    assert cache is not None and cache._cached_trial_number >= 0  # it has read the finished trials
    for seed in (7, 8):
        fresh = optuna.load_study(study_name="s", storage=op.storage, sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=op.startup_trials, constant_liar=True))  # fmt: skip
        t, expected = ask(fresh)
        fresh.tell(t, state=optuna.trial.TrialState.FAIL)  # a failed trial counts for neither
        carried = op._study("s", seed=seed)
        assert carried.sampler._search_space is cache
        t, got = ask(carried)
        assert got == expected
        carried.tell(t, sum(got))


def test_optuna_tweak_goes_on_in_a_new_study_from_the_best_after_a_window_of_trials(world, monkeypatch):
    monkeypatch.setattr(optuna_tweak, "WINDOW", 4)
    monkeypatch.setattr(optuna_tweak, "CARRIED", 2)
    op = OptunaTweak(world.setup("optuna_tweak", include=["EMB_LR", "HEAD_LR"]))
    told = {}

    def child_told(seed: int, value: float):
        proposal = op.propose(world.context("g0000", seed=seed))
        c = proposal.genome
        world.store.add_individual(id=c.id, run="ops", commit=c.commit, parents=("g0000",),
                                   operator="optuna_tweak", status=Status.QUEUED)  # fmt: skip
        op.on_outcome(Outcome(world.store.get(c.id), ("g0000",), Score.of([3.7]), False, improvement=value))
        told[c.id] = value
        return proposal.notes["study"]

    first = [child_told(seed, 0.01 * (5 - seed)) for seed in range(4)]
    assert len(set(first)) == 1  # four finished trials: the window is full
    lineage = first[0]
    assert child_told(4, 0.5) == f"{lineage}.2"
    storage = f"sqlite:///{world.ws.state_dir / 'optuna.db'}"
    old = optuna.load_study(study_name=lineage, storage=storage)
    new = optuna.load_study(study_name=f"{lineage}.2", storage=storage)
    assert len(old.trials) == 4 and new.user_attrs["space"] == old.user_attrs["space"]
    carried = sorted(t.value for t in new.trials if t.user_attrs.get("child") != list(told)[-1])
    assert carried == pytest.approx([0.02, 0.03])  # the two best of the window, as they were told
    assert new.user_attrs["carried_from"] == lineage
    op.close()
    again = OptunaTweak(world.setup("optuna_tweak", include=["EMB_LR", "HEAD_LR"]))  # a resume
    assert again._current(lineage) == f"{lineage}.2"  # goes on where the last session was
    again.close()


def test_optuna_tweak_tells_on_resume_what_was_decided_while_it_was_down(world):
    op = OptunaTweak(world.setup("optuna_tweak", include=["EMB_LR"], max_changes=1))
    child = op.propose(world.context("g0000")).genome
    crashed = op.propose(world.context("g0000", seed=1)).genome
    op.close()  # the controller dies before the tell
    for genome in (child, crashed):
        world.store.add_individual(id=genome.id, run="ops", commit=genome.commit, parents=("g0000",),
                                   operator="optuna_tweak", status=Status.QUEUED)  # fmt: skip
    world.score(child.id, 3.71, decision="reject")
    world.store.set_status(crashed.id, Status.RUNNING)
    world.store.record_evaluation(Evaluation(crashed.id, 2, 3.0, 42, "tiny", "diverged", Purpose.SEARCH))
    world.store.set_decision(crashed.id, "reject")
    again = OptunaTweak(world.setup("optuna_tweak", include=["EMB_LR"]))
    again.close()
    storage = f"sqlite:///{world.ws.state_dir / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = {
        t.user_attrs["child"]: t
        for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
    }
    # its paired improvement: 3.71 against the parent's 3.80 on seed 42; the diverged one: the penalty
    assert trials[child.id].state == optuna.trial.TrialState.COMPLETE
    assert trials[child.id].value == pytest.approx(-0.09)
    assert trials[crashed.id].value == PENALTY and trials[crashed.id].user_attrs["penalty"]


def test_a_code_change_opens_a_new_study_but_a_hyperparameter_change_does_not():
    source = BIGRAM.read_text()
    names = set(parse_hyperparams(source))
    tweaked = source.replace("EMB_LR = 0.002", "EMB_LR = 0.01")
    edited = source.replace("betas=(BETA1, 0.99)", "betas=(BETA1, 0.999)")
    assert lineage_key(tweaked, names) == lineage_key(source, names)
    assert lineage_key(edited, names) != lineage_key(source, names)
    with pytest.raises(OperatorError):
        lineage_key("def broken(:\n", names)


def test_optuna_tweak_without_tunable_constants_is_a_failed_proposal(world):
    op = OptunaTweak(world.setup("optuna_tweak", include=["NO_SUCH_KNOB"]))
    with pytest.raises(OperatorError, match="no tunable constants"):
        op.propose(world.context("g0000"))
    op.close()


# --- merge crossover ---------------------------------------------------------------------------------


def test_merge_crossover_combines_two_siblings_into_a_merge_commit(world):
    a = world.child("g0000", {"EMB_LR": 0.01}, 3.70)
    b = world.child("g0000", {"HEAD_LR": 0.02}, 3.75)
    op = make_operator("merge_crossover", world.setup("merge_crossover"))
    proposal = op.propose(world.context(b, a))
    child = proposal.genome
    assert proposal.kind == LineageKind.MERGE
    assert child.parents == (a, b)  # the better parent first
    knobs = parse_hyperparams(world.repo.read(child))
    assert knobs["EMB_LR"].value == 0.01 and knobs["HEAD_LR"].value == 0.02
    git_parents = git_process(world.repo.root, "rev-list", "--parents", "-n1", child.commit).stdout.split()[
        1:
    ]
    assert [p.decode() for p in git_parents] == [world.repo.get(a).commit, world.repo.get(b).commit]
    # The description says what it took from each parent.
    assert child.description == f"merge {a} + {b}: from {a}: EMB_LR=0.01; from {b}: HEAD_LR=0.02"


def test_merge_crossover_takes_the_partner_whose_changes_complement_the_first_parent(world):
    a = world.child("g0000", {"EMB_LR": 0.01}, 3.70)
    same = world.child("g0000", {"EMB_LR": 0.02, "INIT_STD": 0.05}, 3.71)  # retuned a's knob too
    other = world.child("g0000", {"BETA1": 0.8}, 3.75)  # different knob, both better than g0000
    op = make_operator("merge_crossover", world.setup("merge_crossover"))
    proposal = op.propose(world.context(a, same, elites=("g0000", other)))
    assert set(proposal.genome.parents) == {a, other} and proposal.notes["tier"] == 0
    assert (
        proposal.genome.description == f"merge {a} + {other}: from {a}: EMB_LR=0.01; from {other}: BETA1=0.8"
    )


def test_merge_crossover_keeps_the_better_parents_value_of_a_knob_both_retuned(world):
    a = world.child("g0000", {"EMB_LR": 0.01}, 3.70)
    b = world.child("g0000", {"EMB_LR": 0.03, "HEAD_LR": 0.02}, 3.71)  # b: EMB_LR too, and HEAD_LR
    op = make_operator("merge_crossover", world.setup("merge_crossover"))
    child = op.propose(world.context(b, a)).genome
    knobs = parse_hyperparams(world.repo.read(child))
    assert knobs["EMB_LR"].value == 0.01 and knobs["HEAD_LR"].value == 0.02  # a's EMB_LR: a is better
    assert child.parents == (a, b)
    # b2 retuned only a's knob: the merge would be a itself, nothing new
    b2 = world.child("g0000", {"EMB_LR": 0.03}, 3.71)
    with pytest.raises(OperatorError, match="nothing new"):
        op.propose(world.context(a, b2))


def test_merge_crossover_conflict_and_related_pairs_are_failed_proposals(world):
    a = world.code_child("g0000", "        self.emb = torch.nn.Embedding(vocab, DIM)\n",
                         "        self.emb = torch.nn.Embedding(vocab, 2 * DIM)\n", 3.70)  # fmt: skip
    b = world.code_child("g0000", "        self.emb = torch.nn.Embedding(vocab, DIM)\n",
                         "        self.emb = torch.nn.Embedding(vocab, DIM, max_norm=1.0)\n", 3.71)  # fmt: skip
    op = make_operator("merge_crossover", world.setup("merge_crossover"))
    with pytest.raises(OperatorError, match="conflict"):
        op.propose(world.context(a, b))
    # a parent and its own child: nothing to merge, and no other elite to pair with
    grandchild = world.child(a, {"HEAD_LR": 0.01}, 3.60)
    with pytest.raises(OperatorError, match="ancestor or descendant"):
        op.propose(world.context(grandchild, a, elites=("g0000", a)))
    # ... but an unrelated elite is taken as the partner instead
    c = world.child("g0000", {"BETA1": 0.8}, 3.72)
    child = op.propose(world.context(grandchild, a, elites=(a, c))).genome
    assert set(child.parents) == {grandchild, c}


# --- adaptive weights ----------------------------------------------------------------------------------


def test_weights_favour_operators_whose_children_beat_their_parents_but_keep_a_floor():
    w = OperatorWeights(prior_rate=0.3, prior_trials=3.0, floor=0.2)
    names = ["good", "bad", "new"]
    credits = {"good": Credit(attempts=20, improvements=10), "bad": Credit(attempts=20, improvements=0)}
    probs = w.probabilities(names, credits)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs["good"] > probs["new"] > probs["bad"] >= 0.2 / 3
    draws = [w.draw(names, credits, random.Random(i)) for i in range(300)]
    assert draws.count("good") > draws.count("bad") > 0
    assert w.probabilities(["only"], {}) == {"only": pytest.approx(1.0)}


def test_user_weights_scale_the_adaptive_shares_and_zero_never_draws():
    w = OperatorWeights()
    credits = {"a": Credit(attempts=10, improvements=5)}
    plain = w.probabilities(["a", "b"], credits)
    steered = w.probabilities(["a", "b"], credits, {"b": 4.0})
    assert sum(steered.values()) == pytest.approx(1.0)
    assert steered["b"] / steered["a"] == pytest.approx(4 * plain["b"] / plain["a"])
    assert {w.draw(["a", "b"], credits, random.Random(i), {"a": 0}) for i in range(50)} == {"b"}


def test_credits_count_decided_children_failed_proposals_and_improvements(world):
    world.child("g0000", {"EMB_LR": 0.01}, 3.70)  # beats the baseline (3.80)
    world.child("g0000", {"HEAD_LR": 0.0001}, 3.90, decision="reject")
    world.store.add_event(PROPOSAL_FAILED, {"operator": "merge_crossover", "error": "conflict"}, run="ops")
    credits = credits_from_store(world.store, "ops")
    assert credits["optuna_tweak"] == Credit(attempts=2, improvements=1)
    assert credits["merge_crossover"] == Credit(attempts=1, improvements=0)
