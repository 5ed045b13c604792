"""`evolve run`, `status`, `top`, `show` and `lineage`: run an evolution and read it."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from genome import GenomeError
from genome.repo import git_process
from genome.workspace import Workspace
from prepare.errors import PrepareError
from prepare.profiles import PROFILES, get_profile

from . import confirmation as confirm
from . import storefile
from .cli_common import leaderboard, make_console, parse_gpus, workspace_at
from .cli_validate import latest_transfer, transfer_summary, transfer_table
from .engine import DB_FILE, Engine, EngineConfig
from .errors import EvolveError
from .live import Device, LiveView, render, snapshot
from .llm.config import apply_flags, parse_model_flags
from .scheduler import StopConditions, StopReason, read_log
from .store import Store
from .storefile import Backups

_WORKSPACE = click.option(
    "--workspace",
    "-w",
    default=".",
    type=click.Path(file_okay=False, path_type=Path),
    help="Workspace directory (default: the current one, or the nearest above it).",
)


def _store(ws: Workspace) -> Store:
    db = ws.state_dir / DB_FILE
    if not db.exists():
        good = Backups(db).newest_good()
        if good is not None:  # it was there: say so, rather than "no evolution yet"
            raise storefile.missing(db, good)
        raise EvolveError(f"no evolution in {ws.root} yet; start one with `evolve run`")
    return Store(db, readonly=True)


def with_llm_flags(
    ws: Workspace, models: tuple[str, ...], base_url: str | None, max_usd: float | None
) -> Workspace:
    """The workspace with `--llm-model`, `--llm-base-url` and `--max-llm-usd` laid over [llm]."""
    if not models and base_url is None and max_usd is None:
        return ws
    names, weights = parse_model_flags(models)
    llm = apply_flags(ws.settings.llm, models=names, weights=weights, base_url=base_url, max_usd=max_usd)
    return replace(ws, settings=ws.settings.with_changes(llm=llm))


def run_engine(
    ws: Workspace,
    config: EngineConfig,
    devices: tuple[str, ...],
    console: Console,
    interval: float = 30.0,
    address: str | None = None,
    accelerator_type: str | None = None,
) -> tuple[StopReason, Engine]:
    """Run an evolution with the live view; shared by `evolve run` and `evolve demo`.

    With an `address` ("auto", "ray://HOST:PORT" or "local"), the runs go to a Ray cluster
    instead of `devices`; under a time budget on one device model (`accelerator_type`, else the
    one with the most GPUs), said in one line."""
    from trainer import LocalExecutor, RayExecutor, TrainerError

    holder: dict[str, Engine] = {}

    def source():
        engine = holder["engine"]
        devs = None
        if engine.scheduler is not None:
            now = time.time()
            devs = [
                Device(f"slot {i}", s.individual, now - s.since if s.individual else 0.0)
                for i, s in enumerate(engine.scheduler.busy())
            ]
        return snapshot(
            engine.store, engine.run_name, depth=config.depth, islands=config.islands,
            devices=devs, state_dir=ws.state_dir,
        )  # fmt: skip

    def device_event(kind: str, payload: dict) -> None:  # e.g. a GPU taken out of rotation
        if "engine" in holder:
            holder["engine"].event(kind, **payload)

    view = LiveView(source, console, interval=interval)
    try:
        chosen = (
            LocalExecutor(devices, on_event=device_event)
            if address is None
            else RayExecutor(  # a CPU profile's runs need no GPU
                None if address == "local" else address,
                gpus_per_task=1 if get_profile(config.profile).device == "cuda" else 0,
                budget_unit=get_profile(config.profile).budget_unit,
                accelerator_type=accelerator_type,
            )
        )
    except TrainerError as exc:
        raise EvolveError(str(exc)) from None
    if address is not None:
        console.print(f"Ray: {chosen.placement}", highlight=False)
    with chosen as executor:
        engine = Engine(ws, config, executor, on_event=view.on_event)
        holder["engine"] = engine
        with view:
            try:
                reason = engine.run(on_tick=view.tick)
            except (GenomeError, PrepareError) as exc:
                raise EvolveError(str(exc)) from None
    return reason, engine


_STOP_TEXT = {
    StopReason.DONE: "done: every experiment asked for has finished",  # without --max-experiments
    StopReason.HOURS: "stopped: --hours reached (in-flight runs finished)",
    StopReason.TARGET: "stopped: --target-bpb reached",
    StopReason.INTERRUPTED: "stopped cleanly (in-flight runs finished); `evolve run` resumes",
    StopReason.ABANDONED: "stopped; runs in flight were abandoned and will run again on `evolve run`",
    StopReason.STALLED: "stopped: proposals keep failing (see `evolve status`)",
    StopReason.EXHAUSTED: "stopped: every operator is spent (raise --max-llm-usd to let the LLM propose again)",
}


def stop_text(reason: StopReason, max_experiments: int | None, trained: int) -> str:
    """What the run's last line says; --max-experiments is a total of the run, so it says so."""
    if reason is StopReason.DONE and max_experiments is not None:
        return (
            f"done: the run has trained {trained} children in all its sessions "
            f"(--max-experiments {max_experiments} is that total, not this session's; raise it to train more)"
        )
    return _STOP_TEXT.get(reason, reason.value)


@click.command("run")
@_WORKSPACE
@click.option("--gpus", help="Devices: all (default on GPU profiles), a list like 0,1, or cpu[:N].")
@click.option(
    "--profile", type=click.Choice(sorted(PROFILES)), help="prepare's profile (default: evolve.toml's)."
)
@click.option(
    "--strategy", type=click.Choice(["population", "ratchet"]), help="population (islands) or ratchet."
)
@click.option(
    "--hours",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many hours (of this session; the runs in flight finish).",
)
@click.option(
    "--max-experiments",
    type=click.IntRange(min=0),
    help="Stop once the run has trained this many children IN ALL: a total over every session, unlike "
    "--hours (a resumed run counts the children before it; raise it to go on).",
)
@click.option("--target-bpb", type=float, help="Stop once the best mean val_bpb is at or below this.")
@click.option("--islands", type=click.IntRange(min=1), help="Islands of the population strategy.")
@click.option(
    "--baseline-seeds",
    type=click.IntRange(min=2),
    help="Evaluations of the baseline at start: the first noise model (default 5).",
)
@click.option(
    "--max-seeds", type=click.IntRange(min=2), help="Most paired seeds a child is judged on (default 4)."
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0, max=0.5, min_open=True, max_open=True),
    help="Chance that a child which changes nothing is kept (default 0.05).",
)
@click.option(
    "--budget",
    type=click.FloatRange(min=0, min_open=True),
    help="Training per experiment, in the profile's unit: seconds (GPU profiles) or training tokens (tiny).",
)
@click.option("--depth", type=click.IntRange(min=1), help="Model depth during the search.")
@click.option(
    "--operators", help="Comma-separated operator names (default: evolve.toml's, else all built in)."
)
@click.option("--migrate-every", type=click.IntRange(min=1), help="Decisions between island migrations (20).")
@click.option("--seed", type=int, help="Seed of the search's own random choices (0).")
@click.option(
    "--interval", default=30.0, show_default=True, help="Seconds between summary lines without a terminal."
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this host's devices (--gpus); ray: a Ray cluster's GPUs (--address).",
)
@click.option(
    "--address",
    default="auto",
    show_default=True,
    help="With --executor ray: auto (the cluster `ray start` joined), ray://HOST:10001, or local.",
)
@click.option(
    "--accelerator-type",
    help="With --executor ray and a time budget: the GPU model to run on, as Ray names it (H200); "
    "default: the one with the most GPUs.",
)
@click.option(
    "--llm-model",
    "llm_models",
    multiple=True,
    help="LLM model of the LLM operators, repeatable; NAME or NAME=WEIGHT (its prior share). "
    "Replaces evolve.toml's [llm] models.",
)
@click.option("--llm-base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM).")
@click.option(
    "--max-llm-usd",
    type=click.FloatRange(min=0),
    help="Stop new LLM proposals once the run's LLM spend reaches this (0: no cap); the others go on.",
)
@click.option(
    "--validate-every",
    type=click.FloatRange(min=0, min_open=True),
    help="Every HOURS, `evolve validate` the top elites on the last device, set aside for it.",
)
def run_cmd(workspace, gpus, profile, strategy, hours, max_experiments, target_bpb, islands, baseline_seeds,
            max_seeds, alpha, budget, depth, operators, migrate_every, seed, interval, executor, address,
            accelerator_type, llm_models, llm_base_url, max_llm_usd, validate_every):  # fmt: skip
    """Evolve train.py in this workspace: start a run, or resume the one that was stopped.

    \b
    Settings come from evolve.toml ([run], [search], [operators.NAME]); flags override them.
    The first Ctrl-C (or SIGTERM) stops proposing and lets the runs in flight finish; a second
    one abandons them (they run again on the next `evolve run`). Nothing is ever half-recorded.
    Examples:
      evolve run --gpus all --hours 48
      evolve run --gpus cpu:2 --profile tiny --max-experiments 20
      evolve run --executor ray --address auto --hours 48
      evolve run --llm-model gpt-4.1-mini=3 --llm-model gpt-4.1 --max-llm-usd 20
    """
    ws = with_llm_flags(workspace_at(workspace), llm_models, llm_base_url, max_llm_usd)
    config = EngineConfig.from_workspace(
        ws, profile=profile, strategy=strategy, islands=islands, baseline_seeds=baseline_seeds,
        max_seeds=max_seeds, alpha=alpha, budget=budget, depth=depth, operators=operators, migrate_every=migrate_every,
        seed=seed, stop=StopConditions(hours=hours, max_experiments=max_experiments, target_bpb=target_bpb),
    )  # fmt: skip
    ray = executor == "ray"
    if ray and (gpus or validate_every):
        raise EvolveError(
            "--gpus and --validate-every pick this host's devices; with --executor ray, Ray places runs"
        )
    if accelerator_type and not ray:
        raise EvolveError("--accelerator-type picks a Ray cluster's GPU model; it needs --executor ray")
    devices = () if ray else parse_gpus(gpus, config.profile)
    console = make_console()
    periodic = None
    if validate_every:  # transfer validation in a thread, on a device the search gives up
        from .validate import PeriodicValidation, ValidationSpec, set_aside

        devices, aside = set_aside(devices)
        periodic = PeriodicValidation(ws, ValidationSpec.from_workspace(ws), aside, validate_every)
        periodic.start()
    try:
        reason, engine = run_engine(
            ws, config, devices, console, interval=interval, address=address if ray else None,
            accelerator_type=accelerator_type,
        )  # fmt: skip
    finally:
        if periodic is not None:
            periodic.stop()  # its runs in flight finish and are recorded
    console.print(leaderboard(engine.store, engine.run_name, config.depth, 5))
    trained = engine.experiments()
    engine.close()
    console.print(stop_text(reason, config.stop.max_experiments, trained), highlight=False)
    if reason is StopReason.STALLED:
        sys.exit(1)


@click.command("status")
@_WORKSPACE
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def status_cmd(workspace, as_json):
    """One screen: devices, queue, population per island, best so far, noise floor, duty cycle, disk,
    and the LLM's calls, tokens and cost."""
    ws = workspace_at(workspace)
    with _store(ws) as store:
        run = store.get_run(ws.run)
        if run is None:
            raise EvolveError(f"run {ws.run!r} has not started yet; start it with `evolve run`")
        # The run's own islands (a run started with --islands 1 has one), not evolve.toml's.
        islands = int(run.settings.get("islands", ws.settings.islands))
        snap = snapshot(store, ws.run, depth=int(run.settings.get("depth", ws.settings.depth)),
                        islands=islands, state_dir=ws.state_dir)  # fmt: skip
        transfer = latest_transfer(store, ws.run, snap.depth)
        unisolated = store.unisolated(ws.run)
    warning = (
        f"WARNING: {unisolated} score(s) of this run were made without isolation (EVOLVE_ISOLATION=none): "
        "train.py could read the validation data, the store and your files (docs/SECURITY.md)"
    )
    if as_json:
        data = snap.to_json()
        data["unisolated_evaluations"] = unisolated
        data["transfer"] = transfer[0].to_json() if transfer else None
        data["champion"] = asdict(transfer[1]) if transfer and transfer[1] else None
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        console = make_console()
        if unisolated:
            console.print(f"[bold red]{warning}[/]", highlight=False)
        console.print(render(snap))
        if transfer:  # the verdicts of `evolve validate`, at the deepest validated depth
            console.print(transfer_table(*transfer))
            for line in transfer_summary(*transfer):
                console.print(line, highlight=False)


@click.command("top")
@click.argument("n", default=10, type=click.IntRange(min=1))
@_WORKSPACE
@click.option(
    "--json", "as_json", is_flag=True, help="Print the N best by mean as JSON, whatever their decision."
)
def top_cmd(n, workspace, as_json):
    """The N best individuals by mean val_bpb over their seeds (with n and spread), and apart from
    them the N best rejected children (rejected: not shown better than their parent)."""
    ws = workspace_at(workspace)
    with _store(ws) as store:
        depth = _depth(store, ws)
        if as_json:
            rows = [
                {"id": r.individual.id, "mean": r.score.mean, "std": r.score.std, "n": r.score.n,
                 "decision": r.individual.decision, "operator": r.individual.operator,
                 "island": r.individual.island, "description": r.individual.description}
                for r in store.leaderboard(depth, ws.run, limit=n)
            ]  # fmt: skip
            click.echo(json.dumps(rows, indent=2))
            return
        make_console().print(leaderboard(store, ws.run, depth, n))


def _depth(store: Store, ws: Workspace) -> int:
    run = store.get_run(ws.run)
    return int(run.settings.get("depth", ws.settings.depth)) if run else ws.settings.depth


def _get(store: Store, ws: Workspace, ind_id: str):
    ind = store.get(ind_id)
    if ind is None or ind.run != ws.run:
        raise EvolveError(f"no individual {ind_id} in run {ws.run!r}; `evolve top 50` lists some")
    return ind


def _proposal_notes(store: Store, run: str, ind_id: str) -> dict:
    """The notes the operator left with its proposal (model, rationale, ...), from the event."""
    for event in store.events(run, kind="proposed"):
        if event.payload.get("id") == ind_id:
            return dict(event.payload.get("notes") or {})
    return {}


def _llm_lines(calls, notes: dict) -> list[str]:
    """An LLM child's model, calls, tokens, cost and rationale."""
    models = ", ".join(dict.fromkeys(c.model for c in calls))
    tokens = sum(c.prompt_tokens + c.completion_tokens for c in calls)
    steps = "; ".join(
        f"{c.purpose or 'call'} {c.outcome or ('ok' if c.ok else 'failed')}"
        + (f" ({c.why})" if c.why else "")
        for c in calls
    )
    lines = [
        f"LLM: model {models}, {len(calls)} call(s), {tokens:,} tokens, ${sum(c.cost for c in calls):.4f}",
        f"  calls: {steps}",
    ]
    if notes.get("rationale"):
        lines.append(f"  rationale: {notes['rationale']}")
    if notes.get("partner"):
        lines.append(f"  partner: {notes['partner']}")
    return lines


def _conversation(console: Console, texts: dict, calls) -> None:
    """Each call's prompt and answer, as the store kept them."""
    for k, call in enumerate(calls, 1):
        kept = texts.get(call.id)
        if kept is None:
            continue
        messages, answer = kept
        new = messages if k == 1 else messages[-1:]  # a repair repeats the conversation before it
        console.rule(f"LLM call {k} ({call.purpose or 'call'}, {call.model}): prompt")
        for message in new:
            click.echo(f"[{message.get('role', '?')}]\n{message.get('content', '')}\n")
        console.rule(f"LLM call {k}: answer ({call.outcome or '-'})")
        click.echo(answer)


@click.command("show")
@click.argument("individual")
@_WORKSPACE
@click.option("--lines", default=30, show_default=True, help="Lines of the log tail.")
@click.option(
    "--conversation/--no-conversation",
    default=True,
    show_default=True,
    help="For an LLM child: print the prompt and the answer of each of its LLM calls at the end.",
)
def show_cmd(individual, workspace, lines, conversation):
    """One individual: its scores, its decision, its diff against its parent and its log's tail.

    For a child of an LLM operator also its model, tokens, cost and rationale, and (at the end)
    the prompt it was made from and the answer, as the store kept them."""
    ws = workspace_at(workspace)
    console = make_console()
    with _store(ws) as store:
        ind = _get(store, ws, individual)
        depth = _depth(store, ws)
        score = store.scores(depth, ws.run).get(ind.id)
        evaluations = store.evaluations(ind.id)
        first = store.get(ind.parents[0]) if ind.parents else None
        why = [e.payload for e in store.events(ws.run, kind="decision") if e.payload.get("id") == ind.id]
        fresh = confirm.get(store, ind.id, depth)
        calls = store.llm_calls(ws.run, individual=ind.id)
        notes = _proposal_notes(store, ws.run, ind.id) if calls else {}
        if calls and conversation:
            texts = {c.id: store.llm_text(c.id) for c in calls}
        else:
            texts = {}
    console.print(f"[bold]{ind.id}[/bold]  {ind.description}", highlight=False)
    console.print(
        f"operator {ind.operator}, parents {', '.join(ind.parents) or '-'}, island {ind.island}, "
        f"generation {ind.generation}, status {ind.status.value}, decision {ind.decision or '-'}",
        highlight=False,
    )
    console.print(f"branch {ind.branch}  commit {ind.commit[:12]}", highlight=False)
    if ind.guard_reason:
        console.print(f"refused: {ind.guard_reason}", highlight=False)
    console.print(f"score: {score if score else '-'}", highlight=False)
    if why:
        console.print(f"judged: {why[-1].get('reason', '')}", highlight=False, markup=False)
    if fresh is not None:
        mean = f", mean {fresh.mean:.6f} over them (n={fresh.n})" if fresh.mean is not None else ""
        console.print(f"fresh seeds {fresh.seed_text}: {fresh.status}{mean}", highlight=False)
    for line in _llm_lines(calls, notes) if calls else ():
        console.print(line, highlight=False, markup=False)
    table = Table(title="evaluations")
    for col in ("purpose", "seed", "status", "val_bpb", "train s", "wall s", "device", "reason"):
        table.add_column(col)
    for e in evaluations:
        table.add_row(
            e.purpose.value, str(e.seed), e.status, f"{e.val_bpb:.6f}" if e.val_bpb is not None else "-",
            f"{e.training_seconds:.1f}" if e.training_seconds else "-",
            f"{e.wall_seconds:.1f}" if e.wall_seconds else "-", e.device, e.reason,
        )  # fmt: skip
    console.print(table)
    if first is not None:
        diff = git_process(
            ws.root, "diff", "--stat", "-p", first.commit, ind.commit, "--", *ws.settings.mutable
        )
        console.rule(f"diff against {first.id}")
        click.echo(diff.stdout.decode(errors="replace").rstrip() or "(no change)")
    if evaluations:
        last = evaluations[-1]
        text = read_log(last.log_path) or last.error_tail
        console.rule(f"log tail ({last.purpose.value}, seed {last.seed}): {last.log_path or 'gone'}")
        click.echo("\n".join(text.splitlines()[-lines:]))
    if texts:
        _conversation(console, texts, calls)


@click.command("lineage")
@click.argument("individual")
@_WORKSPACE
def lineage_cmd(individual, workspace):
    """An individual's ancestors as a tree, back to the baseline (merges have two branches)."""
    ws = workspace_at(workspace)
    with _store(ws) as store:
        _get(store, ws, individual)
        scores = store.scores(_depth(store, ws), ws.run)
        seen: set[str] = set()

        def label(ind_id: str) -> str:
            ind = store.get(ind_id)
            if ind is None:
                return f"{ind_id} (missing)"
            s = scores.get(ind_id)
            score = f"{s.mean:.6f} (n={s.n})" if s else ind.status.value
            mark = {"accept": " ✓", "reject": " ✗"}.get(ind.decision or "", "")
            return f"{ind.id} {score}{mark} [{ind.operator}] {ind.description}"

        def grow(node: Tree, ind_id: str) -> None:
            ind = store.get(ind_id)
            if ind is None:
                return
            for parent in ind.parents:
                if parent in seen:
                    node.add(f"{parent} (shown above)")
                    continue
                seen.add(parent)
                grow(node.add(label(parent)), parent)

        seen.add(individual)
        tree = Tree(label(individual))
        grow(tree, individual)
    make_console().print(tree, highlight=False)
