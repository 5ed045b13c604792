"""What the mutation prompt tells the LLM, and how the token budget trims it (least important first)."""

from __future__ import annotations

import pytest
import tiktoken
from loopback import answer

from evolve.llm.prompts import REQUIRED, Part, approx_tokens, fit, mutation_prompt, token_counter

WARMDOWN = "WARMDOWN_FRAC = 0.5"
MATRIX = "MATRIX_LR = 0.04  # Muon, every 2-D matrix inside the blocks"


@pytest.fixture
def family(run):
    """g0000 -> parent (1.28) -> a crashed child; an elite (1.25) on another island; a scratchpad."""
    repo, base = run.repo, run.repo.baseline()
    parent = repo.apply_edit(base, answer("warm-down 0.6", WARMDOWN, "WARMDOWN_FRAC = 0.6"))
    run.add(parent, val_bpb=1.28)
    crashed = repo.apply_edit(parent, answer("fused loss", MATRIX, "MATRIX_LR = undefined_name"))
    run.add(crashed, error="Traceback ...\nNameError: name 'undefined_name' is not defined")
    elite = repo.apply_edit(base, answer("matrix lr 0.05", MATRIX, "MATRIX_LR = 0.05"))
    run.add(elite, val_bpb=1.25, island=1)
    run.store.add_insight("What worked\n- a longer warm-down", run="t")
    return parent, crashed, elite


def test_the_mutation_prompt_has_everything_a_researcher_needs(run, family):
    parent, crashed, elite = family
    ctx = run.context(parent.id, elites=(elite.id, parent.id))
    prompt = mutation_prompt(ctx, ctx.parents[0], 100_000, approx_tokens)
    system, user = (m["content"] for m in prompt.messages)
    assert "## Fair game in train.py" in system and "DESCRIPTION:" in system  # program.md
    assert run.repo.read(parent).strip() in user  # the parent's whole train.py
    assert f"The parent: {parent.id}" in user and "val_bpb 1.280000" in user
    assert "baseline g0000: 1.300000" in user and f"best so far {elite.id}: 1.250000" in user
    assert "- g0000 [baseline] baseline" in user  # lineage
    assert f"{crashed.id} (crash)" in user and "NameError: name 'undefined_name'" in user  # failures
    assert f"{elite.id} (elite, 1.250000, -0.050000 vs its parent): matrix lr 0.05" in user
    assert "+MATRIX_LR = 0.05" in user  # the inspiration's diff
    assert "- a longer warm-down" in user  # meta-insights
    assert prompt.trimmed == ()


def test_a_small_budget_drops_context_but_never_the_parents_code(run, family):
    parent, crashed, elite = family
    ctx = run.context(parent.id, elites=(elite.id,))
    full = mutation_prompt(ctx, ctx.parents[0], 100_000, approx_tokens)
    # Room for everything except about half of the inspiration: the inspirations go first.
    inspiration = approx_tokens("+MATRIX_LR = 0.05") * 8
    trimmed = mutation_prompt(run.context(parent.id, elites=(elite.id,)), ctx.parents[0],
                              full.tokens - inspiration, approx_tokens)  # fmt: skip
    user = trimmed.messages[1]["content"]
    assert trimmed.trimmed == ("Inspirations: 1 dropped",) and trimmed.tokens <= full.tokens - inspiration
    assert "NameError" in user and "a longer warm-down" in user
    tiny = mutation_prompt(run.context(parent.id, elites=(elite.id,)), ctx.parents[0], 1000, approx_tokens)
    user = tiny.messages[1]["content"]
    assert {t.split(":")[0] for t in tiny.trimmed} == {
        "Inspirations", "Recent failures in this lineage", "Its lineage (newest first)",
        "What the search has learned so far",
    }  # fmt: skip
    assert run.repo.read(parent).strip() in user


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
    from evolve.llm import prompts

    monkeypatch.setattr(prompts, "_ENCODINGS", {})
    return prompts


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
    warnings = [r for r in caplog.records if "o200k_base" in r.getMessage()]
    assert len(warnings) == 1 and "bytes/3" in warnings[0].getMessage()


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
