"""The web view in a real headless Chromium, over a REAL tiny CPU evolution that runs while the page is open."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from web_support import PageErrors, Server, evolve_cmd, needs_chromium, serve

import analysis
from genome.repo import run_git

pytestmark = [pytest.mark.slow, needs_chromium]
FINISHED = ("evaluated", "failed", "rejected")
NODES = "() => autoevolve.cy ? autoevolve.cy.nodes().map(n => [n.id(), n.data('status')]) : []"


@dataclass
class Live:
    root: Path
    run: subprocess.Popen
    server: Server
    env: dict[str, str]


@pytest.fixture(scope="module")
def live(tiny_data, tmp_path_factory):
    """`evolve run` (2 baseline seeds, the fewest the noise model takes; 3 children of at most 2 seeds on
    2 CPU slots; budgets of 3) with `evolve serve` beside it."""
    where = tmp_path_factory.mktemp("webrun")
    env = {
        **os.environ,
        "EVOLVE_DATA": str(tiny_data),
        "EVOLVE_PROFILE": "tiny",
        "EVOLVE_HOME": str(where / "home"),
    }
    init = subprocess.run(evolve_cmd("init", str(where / "ws"), "--run", "web", "--profile", "tiny"),
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr
    run = subprocess.Popen(
        evolve_cmd("run", "-w", str(where / "ws"), "--gpus", "cpu:2", "--islands", "1", "--budget", "3",
                   "--baseline-seeds", "2", "--max-seeds", "2", "--max-experiments", "3",
                   "--operators", "optuna_tweak", "--interval", "5"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with serve(where / "ws", env=env) as server:
            yield Live(where / "ws", run, server, env)
    finally:
        if run.poll() is None:
            run.kill()
        run.wait()


def _open(chromium, live: Live, path: str, errors: PageErrors):
    page = chromium.new_page(viewport={"width": 1360, "height": 860})
    errors.watch(page)
    page.goto(live.server.url.rstrip("/") + path)
    page.wait_for_function("() => window.autoevolve && window.autoevolve.renders > 0", timeout=30_000)
    return page


def test_pages_opened_during_the_run_show_every_child_without_a_reload(browser, live):
    errors = PageErrors()
    page = _open(browser, live, "/tree", errors)
    first = dict(page.evaluate(NODES))  # what the store held when the page was drawn (maybe nothing)
    page.evaluate("() => { window.probe = 'the same document'; }")
    overview = _open(browser, live, "/", errors)
    progress = _open(browser, live, "/progress", errors)
    for p in (overview, progress):
        p.evaluate("() => { window.probe = 'the same document'; }")
    assert live.run.poll() is None  # every page was open before the run ended
    out, _ = live.run.communicate(timeout=400)
    assert live.run.returncode == 0, out[-3000:]
    df = analysis.lineage(live.root)
    assert len(df[df["parents"].map(len) > 0]) >= 3
    final = {r.id: r.status for r in df.itertuples()}
    page.wait_for_function(
        "(want) => autoevolve.cy && JSON.stringify(autoevolve.cy.nodes().map(n => [n.id(), n.data('status')]).sort())"
        " === JSON.stringify(want)",
        arg=sorted([k, v] for k, v in final.items()),
        timeout=30_000,
    )
    assert page.evaluate("() => window.probe") == "the same document"  # never reloaded
    assert page.evaluate("() => autoevolve.renders") > 1
    # Children that were unborn or unfinished when the page opened are there, finished, now.
    arrived = [i for i, s in final.items() if s in FINISHED and first.get(i) not in FINISHED]
    assert len(arrived) >= 3, (first, final)
    # The overview followed too: the run's last event, the final counts, no reload.
    overview.wait_for_selector("#events >> text=session end", timeout=30_000)
    assert overview.evaluate("() => window.probe") == "the same document"
    evaluated = sum(1 for s in final.values() if s == "evaluated")
    assert f"evaluated {evaluated}" in overview.inner_text(".cards")
    progress.wait_for_selector(f"#progress-title >> text={len(final)} experiments", timeout=30_000)
    assert progress.evaluate("() => window.probe") == "the same document"
    assert not errors, errors
    for p in (page, overview, progress):
        p.close()


def test_clicking_an_individual_in_the_tree_shows_its_diff(browser, live):
    errors = PageErrors()
    page = _open(browser, live, "/tree", errors)
    df = analysis.lineage(live.root)
    child = df[df["parents"].map(len) > 0].iloc[-1]
    parent = df.set_index("id").loc[child["parent"]]
    page.click("text=fit")
    x, y = page.evaluate(
        "(id) => { const n = autoevolve.cy.getElementById(id), p = n.renderedPosition();"
        " const b = autoevolve.cy.container().getBoundingClientRect(); return [b.left + p.x, b.top + p.y]; }",
        child["id"],
    )
    page.mouse.click(x, y)  # on the canvas, where the node is drawn
    page.wait_for_function(
        "(id) => (document.getElementById('detail-title') || {}).textContent === id + ' · optuna_tweak'",
        arg=child["id"],
    )
    shown = page.inner_text("#detail pre.diff")
    expected = run_git(live.root, "diff", parent["commit"], child["commit"], "--", "train.py")
    assert shown.strip() == expected.strip() and "\n+" in expected and "\n-" in expected
    assert page.url.endswith(f"#{child['id']}")
    seeds = page.inner_text("#detail table.seeds")
    assert "search" in seeds and f"{child['val_bpb_mean']:.6f}" in seeds
    assert "[trainer]" in page.inner_text("#detail pre.log")  # the log's tail
    # How it was judged: the engine's lines about it, its decision last (before any confirmation)
    assert f"{child['id']} {child['decision']}: " in page.inner_text("#detail pre.judging")
    assert not errors, errors
    page.close()


def test_every_page_renders_the_real_run(browser, live):
    assert live.run.poll() is not None  # the run has ended (the first test waited for it)
    df = analysis.lineage(live.root)
    status = subprocess.run(evolve_cmd("status", "-w", str(live.root), "--json"), env=live.env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    best = json.loads(status.stdout)["best"]["id"]
    errors = PageErrors()
    page = _open(browser, live, "/", errors)
    assert page.inner_text("#main h1") == "Run web"
    assert best in page.inner_text(".cards") and "stopped" in page.inner_text(".cards")
    assert "session end" in page.inner_text("#events")
    page.click("nav >> text=Progress")
    page.wait_for_selector(".uplot canvas")
    assert f"{len(df)} experiments" in page.inner_text("#progress-title")
    assert page.locator("table.bests tbody tr").count() >= 1
    page.click("nav >> text=Transfer")
    page.wait_for_selector("text=No validation yet")
    page.click("nav >> text=Operators")
    page.wait_for_selector("table.operators")
    rows = page.locator("table.operators tbody tr td:first-child").all_inner_texts()
    assert rows == list(analysis.operator_stats(df)["operator"])
    page.click("nav >> text=Lineage")
    page.wait_for_function("(n) => autoevolve.cy && autoevolve.cy.nodes().length === n", arg=len(df))
    assert not errors, errors
    page.close()
