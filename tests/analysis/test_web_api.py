"""The web view's HTTP side (a real `evolve serve` over a real store and git repo): data, read-only, no escape."""

from __future__ import annotations

import gzip
import http.client
import json
import sqlite3
import time

import pytest
from analysis_support import RUN, build_run
from web_support import PAGES, digest, get_json, request, serve

import analysis
from analysis.web.individual import curve
from analysis.web.views import inside, safe_relative
from evolve.store import Evaluation, Purpose, Store
from genome.repo import run_git

SECRET = "the-secret-that-must-not-leak"
LOG = """[trainer] python train.py
step 00000 | loss 6.9318 | lrm 1.00 | 1,782 tok/s | mfu 0.0% | 0.0/4s
step 00025 | loss 5.1020 | lrm 1.00 | 9,001 tok/s | mfu 0.0% | 1.0/4s
step 00050 | loss 4.3300 | lrm 0.50 | 9,100 tok/s | mfu 0.0% | 2.0/4s
Traceback (most recent call last):
RuntimeError: boom
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """build_run's workspace, plus what only a live run leaves: a log, an LLM call, a proposal's notes."""
    where = tmp_path_factory.mktemp("web")
    built = build_run(where / "ws")
    (where / "secret.txt").write_text(SECRET)
    logs = built.root / ".evolve" / "logs" / built.ids["crash"]
    logs.mkdir(parents=True)
    with gzip.open(logs / "run.log.gz", "wt") as f:
        f.write(LOG)
    with Store(built.db) as store:
        for seed, path in ((1, logs / "run.log.gz"), (2, where / "secret.txt")):  # the second lies outside
            store.record_evaluation(Evaluation(
                individual=built.ids["crash"], depth=2, budget=5.0, seed=seed, profile="tiny", status="crash",
                purpose=Purpose.REEVAL, error_tail="RuntimeError: boom", log_path=str(path), reason="exit 1",
            ))  # fmt: skip
        store.add_llm_call(model="m1", ok=True, operator="llm_mutation", prompt_tokens=900, completion_tokens=150,
                           cost=0.0123, latency=2.5, run=RUN, individual=built.ids["cap"])  # fmt: skip
        store.add_event("proposed", {"id": built.ids["cap"], "operator": "llm_mutation",
                                     "notes": {"model": "m1", "rationale": "a softer cap keeps logits tame"}}, run=RUN)  # fmt: skip
        # A second run in the same store, to switch to.
        base = store.get(built.ids["base"])
        store.add_run("r2", strategy="ratchet", profile="tiny", settings={"depth": 2})
        store.add_individual(
            id="g0100", run="r2", commit=base.commit, operator="baseline", description="r2 root"
        )
    with serve(built.root) as server:
        yield built, server, where


def test_every_page_and_endpoint_answers(site):
    built, server, _ = site
    for page in PAGES:
        status, headers, body = request(server, page)
        assert status == 200 and headers["content-type"].startswith("text/html"), page
        assert b'src="/static/app.js"' in body and b"http" not in body.split(b"<body>")[1]  # nothing external
        assert "default-src 'self'" in headers["content-security-policy"]
    runs = get_json(server, "/api/runs")
    assert [r["name"] for r in runs["runs"]] == [RUN, "r2"] and runs["default"] == RUN and runs["store"]
    for path in ("overview", "progress", "tree", "transfer", "operators", "state"):
        get_json(server, f"/api/{path}")
    for name in ("progress", "lineage_tree", "transfer"):
        status, headers, body = request(server, f"/api/plot/{name}.png")
        assert (
            status == 200 and body.startswith(b"\x89PNG\r\n\x1a\n") and headers["content-type"] == "image/png"
        )
    status, _, body = request(server, "/static/vendor/cytoscape.min.js")
    assert status == 200 and b"Cytoscape" in body[:400]


def test_tree_progress_transfer_and_operators_show_what_analysis_reads(site):
    built, server, _ = site
    ids = built.ids
    df = analysis.lineage(built.root, RUN)
    tree = get_json(server, "/api/tree")
    assert [n["id"] for n in tree["nodes"]] == list(df["id"])
    edges = {(e["source"], e["target"]): e for e in tree["edges"]}
    assert (
        edges[(ids["warm"], ids["merge"])]["second"] is False and edges[(ids["cap"], ids["merge"])]["second"]
    )
    assert tree["champion"] == ids["warm"] == analysis.champion(df)["id"]
    assert edges[(ids["lr"], ids["warm"])]["champion"] and not edges[(ids["base"], ids["cap"])]["champion"]
    nodes = {n["id"]: n for n in tree["nodes"]}
    assert nodes[ids["crash"]]["status"] == "failed" and nodes[ids["crash"]]["colour"] is None
    assert nodes[ids["warm"]]["val_bpb"] == pytest.approx(0.95)
    progress = get_json(server, "/api/progress")
    assert progress["n"] == 7 and progress["ids"] == list(df.sort_values("created")["id"])
    assert [progress["ids"][i] for i, r in enumerate(progress["record"]) if r] == [
        ids["base"],
        ids["lr"],
        ids["warm"],
    ]
    assert progress["best"][-1] == pytest.approx(0.95) and progress["y"][5] is None  # the crash
    transfer = get_json(server, "/api/transfer")
    (table,) = transfer["tables"]
    verdicts = {r["id"]: r["verdict"] for r in table["rows"]}
    assert verdicts == {
        ids["warm"]: "transfers",
        ids["merge"]: "inconclusive",
        ids["lr"]: "does not transfer",
    }
    # evolve.champion's rule: validated only once `evolve validate` stored its verdict (not here).
    assert transfer["champion"]["id"] == ids["warm"] and transfer["champion"]["validated"] is False
    ops = {r["operator"]: r for r in get_json(server, "/api/operators")["rows"]}
    expected = analysis.operator_stats(df).set_index("operator")
    assert set(ops) == set(expected.index)
    for name, row in ops.items():
        assert row["children"] == expected.loc[name, "children"]
        assert row["improvements"] == expected.loc[name, "improvements"]
    overview = get_json(server, "/api/overview")
    assert overview["best"]["id"] == ids["warm"] and overview["individuals"] == 7
    assert overview["llm"]["calls"] == 2 and overview["llm"]["cost"] == pytest.approx(0.0123)
    assert overview["active"] is False and overview["devices"] == []


def test_an_individual_shows_its_diff_against_each_parent_its_seeds_log_and_llm_calls(site):
    built, server, _ = site
    ids = built.ids
    merge = get_json(server, f"/api/individual/{ids['merge']}")
    assert [d["parent"] for d in merge["diffs"]] == [ids["warm"], ids["cap"]]
    for d in merge["diffs"]:
        assert d["diff"] == run_git(built.root, "diff", d["commit"], merge["commit"], "--", "train.py")
    # Against its first parent it brings the second's change, and the other way round.
    assert "\n+LOGIT_SOFTCAP = 20.0" in merge["diffs"][0]["diff"]
    assert "\n+WARMDOWN_FRAC = 0.6" in merge["diffs"][1]["diff"]
    assert merge["kind"] == "merge" and merge["verdict"] == "inconclusive"
    crash = get_json(server, f"/api/individual/{ids['crash']}")
    seeds = [(e["purpose"], e["seed"], e["status"]) for e in crash["evaluations"]]
    assert seeds == [("search", 0, "crash"), ("reeval", 1, "crash"), ("reeval", 2, "crash")]
    no_file, logged, outside = crash["evaluations"]
    assert no_file["log"] is None and no_file["log_tail"] == "RuntimeError: boom"
    assert logged["log"] == f".evolve/logs/{ids['crash']}/run.log.gz" and "step 00050" in logged["log_tail"]
    assert logged["curve"] == [[0, 6.9318], [25, 5.102], [50, 4.33]]
    assert outside["log"] == "(the log lies outside the workspace: not shown)" and SECRET not in json.dumps(
        crash
    )
    cap = get_json(server, f"/api/individual/{ids['cap']}")
    (call,) = cap["llm"]["calls"]
    assert call["model"] == "m1" and call["prompt_tokens"] == 900 and call["ok"] is True
    assert cap["llm"]["notes"]["rationale"] == "a softer cap keeps logits tame"
    assert cap["children"] == [ids["merge"], ids["bad"]]
    lr = get_json(server, f"/api/individual/{ids['lr']}")
    status, headers, body = request(server, f"/api/source/{ids['lr']}/train.py")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert body.decode().rstrip("\n") == run_git(built.root, "show", f"{lr['commit']}:train.py")
    assert b"\nMATRIX_LR = 0.05" in body


def test_runs_can_be_switched(site):
    _, server, _ = site
    tree = get_json(server, "/api/tree?run=r2")
    assert [n["id"] for n in tree["nodes"]] == ["g0100"]
    assert get_json(server, "/api/overview?run=r2")["strategy"] == "ratchet"
    status, _, body = request(server, "/api/tree?run=nope")
    assert status == 404 and "no run 'nope'" in json.loads(body)["error"]
    status, _, body = request(server, "/api/individual/g0100")  # g0100 is r2's, not the default run's
    assert status == 404 and "no individual" in json.loads(body)["error"]


ESCAPES = (
    "/static/../../secret.txt", "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt", "/static/..%2f..%2f..%2fsecret.txt",
    "/static/vendor/../../web/views.py", "/static/%2f..%2f..%2f..%2fsecret.txt", "/static//etc/passwd",
    "/api/source/{id}/../../../secret.txt", "/api/source/{id}/%2e%2e/%2e%2e/secret.txt",
    "/api/source/{id}/..%2f..%2fsecret.txt", "/api/source/{id}/%2fetc%2fpasswd", "/api/source/{id}//etc/passwd",
    "/api/source/{id}/.git/config", "/api/source/{id}/.evolve/evolve.db", "/api/source/{id}/train.py/../../secret.txt",
    "/api/source/{id}/./train.py", "/api/source/{id}/program.md", "/api/source/..%2f..%2fsecret.txt/train.py",
    "/api/individual/..%2f..%2fsecret.txt", "/api/plot/..%2f..%2fsecret.txt.png", "/../secret.txt",
    "/%2e%2e/secret.txt", "/api/source/{id}/train.py%00.png",
)  # fmt: skip


def test_no_request_reads_a_file_outside_what_the_view_serves(site):
    built, server, where = site
    passwd = open("/etc/passwd", "rb").read()[:40]
    for path in ESCAPES:
        status, _, body = request(server, path.format(id=built.ids["lr"]))
        assert status in (400, 404, 405), (path, status)
        assert SECRET.encode() not in body and passwd not in body and b"SQLite format" not in body, path
        assert b"[core]" not in body and b"def individual" not in body, path
    assert safe_relative("train.py") == "train.py" and safe_relative("a/b.py") == "a/b.py"
    for bad in ("../x", "/etc/passwd", "a/../b", "./a", "a\\b", "a//b", "", "a\x00b"):
        assert safe_relative(bad) is None, bad
    assert inside(built.root, ".evolve/logs/x") is not None and inside(built.root, "../secret.txt") is None
    assert inside(built.root, where / "secret.txt") is None


def test_nothing_served_writes_to_the_store_or_the_repo(site):
    built, server, _ = site
    before = digest(built.db, built.root / ".git")
    refs = run_git(built.root, "for-each-ref")
    paths = [*PAGES, "/api/state", "/api/runs", "/api/overview", "/api/progress", "/api/tree", "/api/transfer",
             "/api/operators", "/api/plot/progress.png", "/api/tree?run=r2", "/api/nothing", "/static/app.js",
             *(f"/api/individual/{i}" for i in built.ids.values()), f"/api/source/{built.ids['merge']}/train.py"]  # fmt: skip
    for path in paths:
        request(server, path)
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, _, _ = request(server, path, method=method, headers={"Content-Length": "0"})
            assert status in (404, 405), (method, path, status)
    assert digest(built.db, built.root / ".git") == before
    assert run_git(built.root, "for-each-ref") == refs and run_git(built.root, "status", "--porcelain") == ""
    # Its connections could not write even if it tried: mode=ro and query_only.
    store = Store(built.db, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
        store._conn().execute("INSERT INTO events (time, kind) VALUES (0, 'x')")
    store.close()


def test_only_the_bound_host_names_are_answered(site):
    _, server, _ = site
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example"):
        status, _, _ = request(server, "/api/runs", headers={"Host": host})
        assert status == 400, host
    for host in (f"localhost:{server.port}", "127.0.0.1", f"[::1]:{server.port}"):
        status, _, _ = request(server, "/api/runs", headers={"Host": host})
        assert status == 200, host


def test_the_stream_sends_the_state_again_when_the_store_changes(site):
    built, server, _ = site
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/api/stream", headers={"Host": f"127.0.0.1:{server.port}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")

    def next_state() -> dict:
        data = None
        while True:
            line = resp.fp.readline().decode()
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "\n" and data is not None:
                return data

    first = next_state()
    assert first["store"] is True and first["events"] == get_json(server, "/api/state")["events"]
    t0 = time.monotonic()
    with Store(built.db) as store:  # a writer beside the view, as `evolve run` is
        store.add_event("note", {"text": "hello"}, run=RUN)
    second = next_state()
    assert second["events"][0] == first["events"][0] + 1 and time.monotonic() - t0 < 10
    conn.close()


def test_a_workspace_without_a_store_is_served_and_says_so(tmp_path):
    from genome.workspace import init_workspace

    ws = init_workspace(tmp_path / "fresh", run="f1", profile="tiny")
    with serve(ws.root) as server:
        assert get_json(server, "/api/state") == {"store": False}
        runs = get_json(server, "/api/runs")
        assert runs["store"] is False and runs["runs"] == []
        status, _, body = request(server, "/api/tree")
        assert status == 404 and "no run" in json.loads(body)["error"]
        assert request(server, "/")[0] == 200
    assert not (ws.root / ".evolve" / "evolve.db").exists()


def test_curve_reads_the_progress_lines_of_a_log():
    assert curve(LOG) == [[0, 6.9318], [25, 5.102], [50, 4.33]]
    assert curve("no progress here\nstep x | loss y\n") == []


def test_the_champion_is_shown_with_its_fresh_seed_score_and_each_individual_with_how_it_was_judged(tmp_path):
    from analysis_support import SEARCH_DEPTH, _ev

    from analysis.web.individual import individual
    from analysis.web.views import WebView
    from evolve import confirmation as confirm
    from evolve.live import event_text

    built = build_run(tmp_path / "ws", validate=False)
    warm = built.ids["warm"]
    fresh = {3: 0.97, 4: 0.96, 5: 0.98}  # worse than its first three seeds (0.95 mean): the winner's curse
    reasons = [
        "undecided on seed 0: child - parent -0.050000, t -3.54",
        "better than its parent at alpha 0.05",
    ]
    with Store(built.db) as store:
        store.add_event("reevaluate", {"id": warm, "reason": reasons[0], "seeds": [0]}, run=RUN)
        store.add_event("decision", {"id": warm, "action": "accept", "reason": reasons[1]}, run=RUN)
        c = confirm.start(store, RUN, warm, SEARCH_DEPTH, first_seed=3, seeds=3)
        for seed, bpb in fresh.items():
            store.record_evaluation(_ev(warm, seed, bpb, purpose="reeval"))
        c = confirm.settle(store, c, fresh, {})
        store.add_event("confirmed", {"id": warm, "status": c.status, "mean": c.mean, "seeds": c.seed_text,
                                      "reason": c.reason}, run=RUN)  # fmt: skip
    assert c.status == "confirmed"
    view = WebView(built.root)
    champ = view.overview(RUN)["champion"]
    assert champ["id"] == warm and champ["confirmation"] == "confirmed" and champ["fresh_seeds"] == "3-5"
    assert champ["val_bpb"] == pytest.approx(0.97) and champ["n"] == 3  # the fresh seeds' mean, not 0.96
    panel = individual(view, RUN, warm)
    assert panel["judged"] == reasons[1] and panel["confirmation"] == "confirmed"
    assert panel["confirmed_bpb_mean"] == pytest.approx(0.97) and panel["bound"] > panel["val_bpb_mean"]
    assert [j["kind"] for j in panel["judging"]] == ["reevaluate", "decision", "confirmed"]
    assert panel["judging"][1]["text"] == event_text("decision", {"id": warm, "action": "accept",
                                                                  "reason": reasons[1]})  # fmt: skip
    assert individual(view, RUN, built.ids["cap"])["judging"] == []  # nothing was recorded for it
