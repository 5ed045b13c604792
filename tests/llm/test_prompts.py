"""What the mutation prompt tells the LLM, and how the token budget trims it (least important first)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import tiktoken
from loopback import answer

from evolve.llm.prompts import REQUIRED, Part, approx_tokens, fit, mutation_prompt, token_counter

WARMDOWN = "WARMDOWN_FRAC = 0.5"
MATRIX = "MATRIX_LR = 0.04  # Muon, every 2-D matrix inside the blocks"


METRICS = {"num_steps": 120, "training_seconds": 10.0, "total_tokens_M": 0.4915, "mfu_percent": 0.0,
           "peak_vram_mb": 0.0, "num_params_M": 1.05}  # fmt: skip


@pytest.fixture
def family(run):
    """g0000 -> parent (1.28, with a training summary) -> a crashed child and a worse child (1.29);
    an elite (1.25) on another island; a noise floor from the baseline's two seeds; notes."""
    repo, base = run.repo, run.repo.baseline()
    run.score("g0000", 1.32, seed=43)  # two baseline seeds: the noise floor
    run.store.set_decision("g0000", "accept")
    parent = repo.apply_edit(base, answer("warm-down 0.6", WARMDOWN, "WARMDOWN_FRAC = 0.6"))
    run.add(parent, status="proposed")
    run.score(parent.id, 1.28, metrics=METRICS)
    crashed = repo.apply_edit(parent, answer("fused loss", MATRIX, "MATRIX_LR = undefined_name"))
    run.add(crashed, error="Traceback ...\nNameError: name 'undefined_name' is not defined")
    worse = repo.apply_edit(
        parent,
        answer(
            "embedding lr 0.4",
            "EMBEDDING_LR = 0.3  # AdamW, token and value embeddings",
            "EMBEDDING_LR = 0.4",
        ),
    )
    run.add(worse, val_bpb=1.29)
    elite = repo.apply_edit(base, answer("matrix lr 0.05", MATRIX, "MATRIX_LR = 0.05"))
    run.add(elite, val_bpb=1.25, island=1)
    run.store.add_insight(f"What helped\n- a longer warm-down [{parent.id} -0.02]", run="t")
    return parent, crashed, elite, worse


def context(run, parent, elite):
    from evolve.judging import Evidence
    from evolve.promotion import PromotionPolicy

    ctx = run.context(parent.id, elites=(elite.id, parent.id))
    model = Evidence(run.store, "t", run.depth).model()
    return replace(ctx, noise_floor=model.sigma, acceptance=PromotionPolicy().describe(model))


def test_the_mutation_prompt_has_everything_a_researcher_needs(run, family):
    parent, crashed, elite, worse = family
    ctx = context(run, parent, elite)
    prompt = mutation_prompt(ctx, ctx.parents[0], 100_000, approx_tokens)
    system, user = (m["content"] for m in prompt.messages)
    assert "## Fair game in train.py" in system and "DESCRIPTION:" in system  # program.md
    assert run.repo.read(parent).strip() in user  # the parent's whole train.py
    assert f"The parent: {parent.id}" in user and "val_bpb 1.280000" in user
    # the run's setting and the parent's training summary
    assert (
        "trains at depth 2 for 65,536 training tokens on cpu, profile tiny (sequence 256, vocabulary 1024)"
        in user
    )
    assert "Only the CPU code path of train.py runs" in user
    assert "Its training (one run): steps 120, tokens/s 49,150, MFU 0.0%, peak memory 0 MiB" in user
    # where the run stands, the noise floor and the rule promotion applies (twice the floor)
    assert "baseline g0000: 1.310000" in user and f"best so far {elite.id}: 1.250000" in user
    assert "noise floor of val_bpb: ±0.0141" in user
    assert "a mean gain of at least 0.1544 val_bpb over 2 seeds" in user
    # the parent's children already tried, with their deltas or why they have none
    tried = user.split("already tried (newest first)")[1].split("##")[0]
    assert (
        f"- {worse.id} [llm_mutation] embedding lr 0.4 {{EMBEDDING_LR 0.3 -> 0.4}}: 1.290000 (+0.010000 vs {parent.id})"
        in tried
    )
    assert (
        f"- {crashed.id} [llm_mutation] fused loss {{MATRIX_LR 0.04 -> not a constant; 1 code hunk(s)}}: failed: exit code 1"
        in tried
    )
    assert tried.index(worse.id) < tried.index(crashed.id)  # newest first
    assert "- g0000 [baseline] baseline" in user  # lineage
    assert f"{crashed.id} (crash)" in user and "NameError: name 'undefined_name'" in user  # failures
    assert f"{elite.id} (elite, 1.250000, -0.060000 vs its parent): matrix lr 0.05" in user
    assert "+MATRIX_LR = 0.05" in user  # the inspiration's diff
    assert "notes version 1" in user and "- a longer warm-down" in user  # meta-insights
    assert prompt.trimmed == ()


# What a tight budget drops, in order: the first part here loses all its items before the next
# loses any. The parent's header (setting, training, rule), its train.py and the task stay.
DROP_ORDER = (
    "Inspirations",
    "Recent failures in this lineage",
    "Its lineage (newest first)",
    "What the search has learned so far",
    "already tried (newest first)",
)


def test_a_tight_budget_drops_context_in_a_pinned_order_and_never_the_essentials(run, family):
    parent, crashed, elite, worse = family
    full = mutation_prompt(
        context(run, parent, elite), run.context(parent.id).parents[0], 100_000, approx_tokens
    )
    emptied: list[str] = []
    for budget in range(full.tokens, 1000, -40):
        prompt = mutation_prompt(
            context(run, parent, elite), run.context(parent.id).parents[0], budget, approx_tokens
        )
        user = prompt.messages[1]["content"]
        for essential in (run.repo.read(parent).strip(), "trains at depth 2 for 65,536 training tokens on cpu", "Its training",
                          "How a child is judged", "Propose ONE change"):  # fmt: skip
            assert essential in user, (budget, essential)
        present = [t for t in DROP_ORDER if t in user]
        gone = [t for t in DROP_ORDER if t not in present]
        for title in gone:
            if title not in emptied:
                emptied.append(title)
        # Nothing of a more important part goes while a less important one still has items.
        for t in prompt.trimmed:
            title = t.split(":")[0]
            rank = next(i for i, d in enumerate(DROP_ORDER) if d in title)
            assert all(d not in user for d in DROP_ORDER[:rank]), (budget, prompt.trimmed)
        assert prompt.tokens <= budget or not present, budget
        if not present:
            break
    assert emptied == list(DROP_ORDER)


def test_fit_counts_with_tiktoken_and_drops_the_lowest_priority_items_first():
    # A byte-level tiktoken encoding: real tiktoken, nothing to download.
    enc = tiktoken.Encoding("bytes", pat_str=r"(?s).", mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={})  # fmt: skip
    count = lambda text: len(enc.encode(text))
    parts = [
        Part("code", ["x" * 400], REQUIRED),
        Part("notes", ["n1" * 50, "n2" * 50], 50),
        Part("ideas", ["i1" * 50, "i2" * 50, "i3" * 50], 20),
    ]
    out = fit("system", parts, 800, count)
    user = out.messages[1]["content"]
    assert out.tokens <= 800 and "x" * 400 in user
    assert "i1" * 50 in user and "i2" * 50 not in user and "n2" * 50 in user  # ideas trimmed from the end
    everything_optional_gone = fit("system", parts, 10, count)
    assert "x" * 400 in everything_optional_gone.messages[1]["content"]
    assert "ideas" not in everything_optional_gone.messages[1]["content"]


def test_an_unknown_or_approximate_tokenizer_falls_back_to_counting_bytes():
    assert token_counter("approx")("abcdef") == 2
    assert token_counter("no-such-encoding")("abcdef") == 2


def _byte_encoding() -> tiktoken.Encoding:
    return tiktoken.Encoding("bytes", pat_str=r"(?s).", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={})  # fmt: skip


@pytest.fixture
def fresh_counters(monkeypatch):
    """No encodings loaded yet in this process; the default encoding name is what the run asks for."""
    from evolve.llm import budget

    monkeypatch.setattr(budget, "_ENCODINGS", {})
    monkeypatch.setattr(budget, "_WARNED", False, raising=False)
    return budget


def test_offline_the_default_encoding_falls_back_to_an_approximate_count_with_one_warning(
    fresh_counters, monkeypatch, caplog
):
    """Fakes tiktoken's download failing (what happens offline): the real one would need the network."""

    def offline(name):
        raise ConnectionError(f"Failed to resolve 'openaipublic.blob.core.windows.net' for {name}")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with caplog.at_level("WARNING", logger="evolve.llm"):
        assert token_counter("o200k_base")("abcdef") == 2
        assert token_counter("o200k_base")("abcdefghi") == 3
        assert token_counter("cl100k_base")("abcdef") == 2  # another encoding: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "evolve.llm"]
    assert len(warnings) == 1 and "o200k_base" in warnings[0] and "bytes/3" in warnings[0]
    # short: one line that names the cause's kind, not the URL and resolver text the exception carries
    assert "\n" not in warnings[0] and len(warnings[0]) < 140 and "ConnectionError" in warnings[0]
    assert "openaipublic" not in warnings[0]


def test_a_download_that_hangs_is_given_up_on_and_a_loadable_encoding_is_used(fresh_counters, monkeypatch):
    """Fakes a firewalled download (tiktoken waits with no timeout of its own) by a call that blocks."""
    import threading
    import time

    release = threading.Event()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: release.wait(30) and _byte_encoding())
    monkeypatch.setattr(fresh_counters, "ENCODING_TIMEOUT", 0.3)
    start = time.monotonic()
    try:
        assert token_counter("o200k_base")("abcdef") == 2
    finally:
        release.set()
    assert time.monotonic() - start < 5
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: _byte_encoding())
    assert token_counter("cached-bytes")("abcdef") == 6  # one token per byte: the encoding counts
