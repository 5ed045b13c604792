"""A replayable LLM benchmark: a real CPU tiny search whose LLM is a set of recorded answers.

The real engine (store, git, worktrees, novelty, the static guard, noise-aware promotion) runs
`llm_mutation` and `llm_crossover` on the packaged baseline train.py, trained for real on the
tiny profile (CPU). Their OpenAI-compatible endpoint is the loopback server of the tests
(tests/llm/loopback.py), answering from `bench/llm_replay_answers.json`: good, useless and broken
edits written for that train.py. The replayer stands in for a model that reads its prompt only as
far as any model must: it quotes the SEARCH lines from the train.py (or the crossover draft) in
the prompt, and it skips a recorded idea that the prompt lists among the parent's children
already tried, by its description or by the knobs the list says were changed (`--blind` turns
that off, to see what the list is worth). Answers are served in
the recorded order, each request taking the next one that applies; a repair request gets the
entry's recorded repair; the notebook request gets the next recorded notes answer (a useless
one, or notes filled from the children the prompt lists).

Reported, from the store after the run:

- children per LLM call: LLM children proposed (trained, failed or refused) / LLM calls (every
  purpose: mutation, crossover, repair, insights);
- share of repeats: LLM children that repeat an earlier sibling's idea (the same knobs, or the
  same code region, changed from the same parents) or that the novelty check refused as a
  duplicate;
- share of unusable answers: answered calls whose answer made no child (and, beside it, the
  share repaired);
- improvement per LLM dollar: (baseline mean - best accepted mean) val_bpb / LLM USD, at the
  prices given (a model the size of gpt-4.1-mini by default), tokens counted as bytes / 3.

    python bench/llm_replay.py --experiments 24 --out docs/bench/llm_replay.json
    python bench/llm_replay.py --experiments 24 --blind --out docs/bench/llm_replay.json

The JSON file keeps the latest run of each mode (with the tried children, and blind).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "llm"))

from loopback import LLMServer, Reply  # noqa: E402
from overhead import prepared_data  # noqa: E402

from evolve.engine import Engine, EngineConfig  # noqa: E402
from evolve.judging import Evidence  # noqa: E402
from evolve.pairs import changes, files_at  # noqa: E402
from evolve.scheduler import StopConditions  # noqa: E402
from evolve.store import Store  # noqa: E402
from genome.hyperparams import parse_hyperparams, rewrite_hyperparams  # noqa: E402
from genome.record import BASELINE_ID  # noqa: E402
from genome.repo import MACHINE_IDENTITY, run_git  # noqa: E402
from genome.settings import SETTINGS_FILE, to_toml  # noqa: E402
from genome.workspace import init_workspace, open_workspace  # noqa: E402
from trainer import LocalExecutor  # noqa: E402

ANSWERS = REPO / "bench" / "llm_replay_answers.json"
MODEL = "replay-mini"
PRICE = (0.40, 1.60)  # USD per million tokens, prompt and completion (gpt-4.1-mini's list price)
MAX_USD = 1.0  # the run's LLM cap: a safety net should the recorded ideas run out (each try then fails)
REPAIR = "Your answer could not be used"
NOTEBOOK = "Rewrite the notebook"
_FENCE = re.compile(r"```python\n(.*?)\n```", re.DOTALL)
_CHILD = re.compile(r"^- (g\d{4,}) \[[^\]]*\] (.*): \S+ \(([+-]\d+\.\d+) vs best parent\)$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# The replayer
# ---------------------------------------------------------------------------------------------
def render(entry: Mapping[str, Any], source: str) -> str | None:
    """The answer text of a recorded entry against `source` (the file the prompt shows), or None
    when it does not apply there (a knob it lacks or already has, a SEARCH block not in it)."""
    if "text" in entry:
        return str(entry["text"])
    blocks: list[tuple[str, str]] = []
    if "knobs" in entry:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["knobs"].items()}
        knobs = parse_hyperparams(source)
        if any(k not in knobs or knobs[k].value == v for k, v in values.items()):
            return None
        new = rewrite_hyperparams(source, values).splitlines()
        old = source.splitlines()
        blocks = [(old[knobs[k].line - 1], new[knobs[k].line - 1]) for k in values]
    else:
        blocks = [(s, r) for s, r in entry["blocks"]]
        if entry.get("kind") != "broken" and any(s not in source for s, _ in blocks):
            return None
    body = "".join(f"<<<<<<< SEARCH\n{s}\n=======\n{r}\n>>>>>>> REPLACE\n" for s, r in blocks)
    return f"DESCRIPTION: {entry['description']}\nRATIONALE: {entry.get('rationale', '')}\n\n{body}"


def notebook(prompt: str) -> str:
    """Notes filled from the children the notebook prompt lists: the best and the worst delta."""
    rows = [(m.group(1), m.group(2), float(m.group(3))) for m in _CHILD.finditer(prompt)]
    if not rows:
        return "What helped\n- nothing measured yet"
    rows.sort(key=lambda r: r[2])
    best, worst = rows[0], rows[-1]
    out = []
    if best[2] < 0:
        out.append(f"What helped\n- {best[1]} [{best[0]} {best[2]:+.4f}]")
    if worst[2] > 0:
        out.append(f"What hurt\n- {worst[1]} [{worst[0]} {worst[2]:+.4f}]")
    out.append(f"Open questions\n- does {best[1]} combine with the other gains? [{best[0]}]")
    return "\n".join(out)


class Replayer:
    """The loopback server's `default`: the next recorded answer that applies to the request."""

    def __init__(self, answers: Mapping[str, list[dict[str, Any]]], blind: bool = False) -> None:
        self.answers = answers
        self.blind = blind
        self.next = {kind: 0 for kind in answers}
        self.sent: dict[str, dict[str, Any]] = {}  # answer text -> its entry (for the repair)
        self.served: list[dict[str, Any]] = []  # per request: purpose, entry kind, description
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> Reply:
        with self.lock:
            return self._reply(body["messages"])

    def _reply(self, messages: list[dict[str, str]]) -> Reply:
        last = messages[-1]["content"]
        if last.startswith(REPAIR):
            entry = self.sent.get(messages[-2]["content"], {})
            fix = entry.get("repair")
            source = _file(messages[1]["content"])
            text = (render({"kind": "good", **fix}, source) if fix else None) or messages[-2]["content"]
            self.served.append({"purpose": "repair", "kind": entry.get("kind", "?"),
                                "description": (fix or entry).get("description", "")})  # fmt: skip
            return Reply(text=text, usage=None)
        if NOTEBOOK in last:
            entry = self._take("insights", lambda e: True)
            text = notebook(last) if entry.get("template") else entry["text"]
            self.served.append({"purpose": "insights", "kind": entry["kind"], "description": text[:60]})
            return Reply(text=text, usage=None)
        crossover = "## The draft child" in last
        source = _file(last.split("## The draft child", 1)[1] if crossover else last)
        tried = "" if self.blind else _tried(last)
        clean = "## The conflicts" not in last and "but that merge was already tried" not in last

        def fits(e: dict[str, Any]) -> bool:
            if e.get("clean_only") and not clean:
                return False
            knobs = [*e.get("knobs", ()), *(e.get("repair") or {}).get("knobs", ())]
            if e["description"] in tried or any(re.search(rf"\{{[^}}]*\b{k}\b", tried) for k in knobs):
                return False  # the prompt says this idea (or a change of the same knob) was tried
            return render(e, source) is not None

        purpose = "crossovers" if crossover else "mutations"
        entry = self._take(purpose, fits)
        text = render(entry, source) or render({**entry, "kind": "broken"}, source) or ""
        self.sent[text] = entry
        self.served.append(
            {"purpose": purpose[:-1], "kind": entry["kind"], "description": entry["description"]}
        )
        return Reply(text=text, finish=entry.get("finish", "stop"), usage=None)

    def _take(self, kind: str, fits) -> dict[str, Any]:
        """The next entry (cyclically) that fits; the next one at all when none does."""
        entries = self.answers[kind]
        start = self.next[kind]
        for k in range(len(entries)):
            i = (start + k) % len(entries)
            if fits(entries[i]):
                self.next[kind] = i + 1
                return entries[i]
        self.next[kind] = start + 1
        return entries[start % len(entries)]


def _file(text: str) -> str:
    match = _FENCE.search(text)
    return match.group(1) + "\n" if match else ""


def _tried(prompt: str) -> str:
    """The section of a prompt that lists the parent's children already tried."""
    if "already tried (newest first)" not in prompt:
        return ""
    return prompt.split("already tried (newest first)", 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------------------------------------
# The run and its figures
# ---------------------------------------------------------------------------------------------
def make_workspace(root: Path, url: str, budget: float, islands: int, insights_every: int):
    ws = init_workspace(root, run="replay", profile="tiny", islands=islands, budget=budget)
    llm = {"model": MODEL, "base_url": url, "tokenizer": "approx", "insights_every": insights_every,
           "timeout": 30.0, "backoff": 0.01, "prices": {MODEL: list(PRICE)}, "max_usd": MAX_USD}  # fmt: skip
    search = (
        '\n[search]\noperators = ["llm_mutation", "llm_crossover"]\nbaseline_seeds = 2\nmax_seeds = 2\n'
        "proposers = 1\nahead = 1\n"
    )
    (ws.root / SETTINGS_FILE).write_text(to_toml(ws.settings.with_changes(llm=llm)) + search)
    run_git(ws.root, "commit", "-q", "-m", "replay settings", "--", SETTINGS_FILE, env=MACHINE_IDENTITY)
    return open_workspace(ws.root)


def signature(ws, store: Store, ind) -> tuple:
    """What a child changed since its first parent: knob names and code regions."""
    parent = store.get(ind.parents[0])
    repo = ws.repo()
    found = changes(files_at(repo, parent.commit), files_at(repo, ind.commit))
    return tuple(sorted(found.knobs)), found.regions


def figures(ws, store: Store, run: str, wall: float, served: list[dict[str, Any]]) -> dict[str, Any]:
    depth = ws.settings.depth
    scores = store.scores(depth, run)
    children = [i for i in store.individuals(run) if i.parents and i.operator.startswith("llm_")]
    calls = store.llm_calls(run)
    answered = [c for c in calls if c.ok]
    seen: dict[tuple, set] = {}
    repeats = []
    for ind in children:
        duplicate = (ind.guard_reason or "").startswith("duplicate of")
        key = tuple(sorted(ind.parents))
        sig = signature(ws, store, ind)
        if duplicate or sig in seen.setdefault(key, set()):
            repeats.append(ind.id)
        seen[key].add(sig)
    accepted = [
        scores[i.id].mean for i in store.individuals(run, decision="accept") if i.id in scores and i.parents
    ]
    base = scores[BASELINE_ID].mean
    best = min(accepted, default=base)
    cost = sum(c.cost for c in calls)
    by = lambda attr: {
        v: sum(1 for c in calls if getattr(c, attr) == v) for v in sorted({getattr(c, attr) for c in calls})
    }
    crossovers = [i for i in children if i.operator == "llm_crossover"]
    runs = store.evaluations(run=run)
    steps = [e.metrics["num_steps"] for e in runs if e.ok and isinstance(e.metrics.get("num_steps"), int)]
    return {
        "experiments": sum(1 for i in children if i.status.value in ("evaluated", "failed")),
        "llm_children": len(children),
        "llm_calls": len(calls),
        "children_per_llm_call": round(len(children) / len(calls), 3) if calls else None,
        "repeats": len(repeats),
        "share_of_repeats": round(len(repeats) / len(children), 3) if children else None,
        "repeat_ids": repeats,
        "answered_calls": len(answered),
        "unusable_answers": sum(1 for c in answered if c.outcome == "unusable"),
        "share_unusable": round(sum(1 for c in answered if c.outcome == "unusable") / len(answered), 3)
        if answered else None,
        "share_repaired": round(sum(1 for c in answered if c.outcome == "repaired") / len(answered), 3)
        if answered else None,
        "calls_by_purpose": by("purpose"),
        "unusable_by_purpose": {p: sum(1 for c in answered if c.purpose == p and c.outcome == "unusable")
                                for p in sorted({c.purpose for c in answered})},
        "calls_by_outcome": by("outcome"),
        "children_by_status": {s: sum(1 for i in children if i.status.value == s)
                               for s in sorted({i.status.value for i in children})},
        "accepted": len(accepted),
        "crossovers": len(crossovers),
        "crossovers_trained": sum(1 for i in crossovers if i.status.value == "evaluated"),
        "baseline_val_bpb": round(base, 6),
        "best_val_bpb": round(best, 6),
        "improvement": round(base - best, 6),
        "llm_usd": round(cost, 6),
        "improvement_per_usd": round((base - best) / cost, 3) if cost else None,
        "prompt_tokens": sum(c.prompt_tokens for c in calls),
        "completion_tokens": sum(c.completion_tokens for c in calls),
        "notes_versions": len(store.insight_versions(run)),
        "device_runs": len(runs),
        "median_steps": statistics.median(steps) if steps else None,
        "runs_over_budget": sum(1 for e in runs if "over the budget" in e.reason),
        "noise_floor": Evidence(store, run, depth).model().sigma,  # the judge's sigma
        "wall_seconds": round(wall, 1),
        "served": served,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llm-replay-"))
    data, fingerprint = prepared_data(workdir)
    answers = json.loads(ANSWERS.read_text())
    replayer = Replayer(answers, blind=args.blind)
    server = LLMServer()
    server.default = replayer
    os.environ.pop("OPENAI_MODEL", None)
    root = workdir / ("blind" if args.blind else "aware")
    shutil.rmtree(root, ignore_errors=True)
    ws = make_workspace(root, server.url, args.budget, args.islands, args.insights_every)
    config = EngineConfig.from_workspace(
        ws, seed=args.seed, stop=StopConditions(max_experiments=args.experiments)
    )
    started = time.monotonic()
    try:
        with LocalExecutor.cpu(args.slots) as executor:
            engine = Engine(ws, config, executor)
            try:
                reason = engine.run(install_signals=False)
            finally:
                engine.close()
    finally:
        server.close()
    wall = time.monotonic() - started
    with Store(ws.state_dir / "evolve.db", readonly=True) as store:
        out = figures(ws, store, "replay", wall, replayer.served)
    out.update(
        stop_reason=reason.value,
        date=dt.date.today().isoformat(),
        machine=f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        python=platform.python_version(),
        command=" ".join(["python", "bench/llm_replay.py", *sys.argv[1:]]),
        settings={"experiments": args.experiments, "budget": args.budget, "islands": args.islands,
                  "slots": args.slots, "seed": args.seed, "insights_every": args.insights_every,
                  "blind": args.blind, "model": MODEL, "price_usd_per_M": list(PRICE),
                  "data_fingerprint": fingerprint, "data": str(data)},
        workspace=str(ws.root),
    )  # fmt: skip
    return out


def markdown(r: Mapping[str, Any]) -> str:
    head = ("| prompt | experiments | LLM children | LLM calls | children per call | repeats | unusable "
            "answers | repaired | accepted | crossovers trained | val_bpb baseline -> best | LLM USD | "
            "improvement per USD |")  # fmt: skip
    row = (
        f"| {'blind' if r['settings']['blind'] else 'with tried children'} | {r['experiments']} | "
        f"{r['llm_children']} | {r['llm_calls']} | {r['children_per_llm_call']} | "
        f"{r['repeats']} ({100 * (r['share_of_repeats'] or 0):.0f}%) | {r['unusable_answers']} "
        f"({100 * (r['share_unusable'] or 0):.0f}%) | {100 * (r['share_repaired'] or 0):.0f}% | {r['accepted']} | "
        f"{r['crossovers_trained']} | {r['baseline_val_bpb']:.4f} -> {r['best_val_bpb']:.4f} | "
        f"${r['llm_usd']:.4f} | {r['improvement_per_usd']} bpb/$ |"
    )
    return "\n".join([head, _rule(head), row])


def _rule(head: str) -> str:
    return "|" + "---|" * (head.count("|") - 1)


def save(path: Path, result: Mapping[str, Any]) -> None:
    """Write `result` into the JSON file at `path` ({"runs": [...]}), replacing the run of the same
    prompt mode (blind or not), so one file holds the latest run of each."""
    runs: list[Mapping[str, Any]] = []
    if path.exists():
        try:
            runs = list(json.loads(path.read_text()).get("runs", []))
        except (ValueError, AttributeError):
            runs = []
    runs = [r for r in runs if r.get("settings", {}).get("blind") != result["settings"]["blind"]]
    runs.append(result)
    runs.sort(key=lambda r: bool(r["settings"]["blind"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", type=int, default=24, help="children to train (default 24)")
    p.add_argument(
        "--budget", type=float, default=10.0, help="seconds of training per run (default 10, the profile's)"
    )
    p.add_argument("--islands", type=int, default=2)
    p.add_argument("--slots", type=int, default=1, help="CPU slots training at once (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--insights-every", type=int, default=6)
    p.add_argument("--blind", action="store_true", help="the replayer ignores the prompt's tried children")
    p.add_argument("--workdir", help="keep the workspace here (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    result = run(args)
    if args.out:
        save(args.out, result)
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "served"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
