"""The standing line of a prompt names the run's own generation 0, whatever its id."""

from __future__ import annotations

from dataclasses import replace

from loopback import answer

from evolve.llm.context import standing


def test_the_standing_names_the_runs_own_baseline(run):
    ctx = run.context("g0000")
    assert (
        standing(ctx, run.store.scores(run.depth, "t"))
        == "baseline g0000: 1.300000; best so far g0000: 1.300000."
    )
    # A later run of the workspace starts from a new id (ids run on across runs): the prompt
    # compares with that run's generation 0, not with the first run's g0000.
    later = run.repo.apply_edit(
        run.repo.baseline(), answer("warm-down 0.6", "WARMDOWN_FRAC = 0.5", "WARMDOWN_FRAC = 0.6")
    )
    run.add(later, val_bpb=1.35)
    text = standing(replace(ctx, baseline=later.id), run.store.scores(run.depth, "t"))
    assert text == f"baseline {later.id}: 1.350000; best so far g0000: 1.300000."
