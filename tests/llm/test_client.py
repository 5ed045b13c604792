"""The LLM client against a loopback server: retries, Retry-After, cost, the USD cap, calls in flight.

Nothing waits on a race: a reply the client must time out on is held until the client has given
up, and calls kept in flight are held until the others are seen waiting for a slot."""

from __future__ import annotations

import sys
import threading

import pytest
from loopback import HANG, SECRET, Reply, wait_until

from evolve.llm.client import BudgetExhausted, LLMClient, LLMError, ModelBandit, retry_after
from evolve.llm.config import load_config


def make_client(server, **llm) -> tuple[LLMClient, list[dict]]:
    table = {
        "model": "m1",
        "timeout": 5.0,
        "backoff": 0.01,
        "max_backoff": 0.05,
        "tokenizer": "approx",
        **llm,
    }
    calls: list[dict] = []
    client = LLMClient(load_config(table))
    return client, calls


def ask(client: LLMClient, calls: list[dict], model: str = "m1", purpose: str = "mutation"):
    return client.complete([{"role": "user", "content": "hi"}], model, lambda **kw: calls.append(kw), purpose)


def test_an_answer_is_returned_with_its_tokens_and_cost(llm_server):
    llm_server.push(Reply(text="hello", usage=(1000, 500)))
    client, calls = make_client(llm_server, prices={"m1": [2.0, 8.0]})
    out = ask(client, calls)
    assert out.text == "hello" and out.prompt_tokens == 1000 and out.completion_tokens == 500
    assert out.cost == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    # The purpose, the messages and the answer go with the call (for `evolve show`).
    assert calls == [
        dict(
            model="m1",
            ok=True,
            purpose="mutation",
            prompt_tokens=1000,
            completion_tokens=500,
            cost=out.cost,
            latency=calls[0]["latency"],
            prompt=[{"role": "user", "content": "hi"}],
            answer="hello",
        )
    ]
    request = llm_server.requests[0]
    assert request["body"]["model"] == "m1" and request["headers"]["authorization"] == f"Bearer {SECRET}"


def test_timeout_500_and_reset_are_retried_and_each_attempt_recorded(llm_server):
    # The first answer comes only after the call is over: the client times out on it whatever the
    # load. The 3 s timeout is only what the other (immediate) answers must beat.
    late = threading.Event()
    llm_server.push(
        Reply(text="late", hold=late), Reply(status=500), Reply(reset=True), Reply(text="finally")
    )
    client, calls = make_client(llm_server, timeout=3.0)
    try:
        out = ask(client, calls)
    finally:
        late.set()
    assert out.text == "finally"
    assert [c["ok"] for c in calls] == [False, False, False, True]
    # A failed attempt gave no answer: unusable, with its error.
    assert [c.get("outcome") for c in calls[:3]] == ["unusable"] * 3 and all(c["error"] for c in calls[:3])
    errors = [c["error"] for c in calls[:3]]
    assert "timeout" in errors[0] and errors[1].startswith("500") and "connection" in errors[2]


def test_429_waits_as_long_as_retry_after_says(llm_server):
    llm_server.push(Reply(status=429, headers={"Retry-After": "1"}, body="slow down"), Reply(text="ok"))
    client, calls = make_client(llm_server)
    assert ask(client, calls).text == "ok"
    first, second = llm_server.requests
    assert second["time"] - first["time"] >= 0.95  # backoff alone would be ~0.01 s
    assert calls[0]["error"].startswith("429") and "slow down" in calls[0]["error"]


def test_a_client_error_is_not_retried_and_the_key_never_leaks(llm_server):
    # OpenAI echoes (part of) a wrong key in its 401 message.
    llm_server.push(
        Reply(status=401, body=f"Incorrect API key provided: {SECRET[:10]}...{SECRET[-6:]} {SECRET}")
    )
    client, calls = make_client(llm_server)
    with pytest.raises(LLMError) as info:
        ask(client, calls)
    assert len(llm_server.requests) == 1 and len(calls) == 1
    for text in (str(info.value), calls[0]["error"]):
        assert "401" in text and SECRET not in text and SECRET[:10] not in text and SECRET[-6:] not in text


def test_retries_run_out_into_an_llm_error(llm_server):
    llm_server.push(*[Reply(status=503)] * 3)
    client, calls = make_client(llm_server, max_retries=2)
    with pytest.raises(LLMError, match="after 3 attempt"):
        ask(client, calls)
    assert len(calls) == 3 and not any(c["ok"] for c in calls)


def test_a_body_that_is_not_json_is_a_failed_attempt(llm_server):
    llm_server.push(Reply(raw=True, body="<html>bad gateway</html>"), Reply(text="fine"))
    client, calls = make_client(llm_server)
    assert ask(client, calls).text == "fine"
    assert not calls[0]["ok"] and calls[0]["error"]


def test_missing_usage_is_estimated_so_the_cap_still_counts(llm_server):
    llm_server.push(Reply(text="x" * 300, usage=None))
    client, calls = make_client(llm_server, prices={"m1": [1000.0, 1000.0]})
    out = ask(client, calls)
    assert out.completion_tokens == 100 and out.prompt_tokens > 0 and out.cost > 0


def test_the_usd_cap_stops_new_calls(llm_server):
    llm_server.default = lambda body: Reply(text="ok", usage=(1_000_000, 0))
    client, calls = make_client(llm_server, prices={"m1": [1.0, 0.0]}, max_usd=1.5)
    ask(client, calls)
    ask(client, calls)  # $1 spent < $1.5: allowed, and now $2
    assert client.exhausted
    with pytest.raises(BudgetExhausted, match=r"cap of \$1.50"):
        ask(client, calls)
    assert len(llm_server.requests) == 2
    resumed = LLMClient(load_config({"model": "m1", "max_usd": 1.5}), spent=2.0)
    assert resumed.exhausted  # a resumed run counts what it spent before


def _waiting_for_a_slot(threads: list[threading.Thread]) -> int:
    """How many of `threads` are blocked on the client's in-flight limit: their innermost frames
    are a semaphore's acquire waiting on its condition, inside `LLMClient._request`."""
    frames = sys._current_frames()
    waiting = 0
    for t in threads:
        stack, frame = [], frames.get(t.ident)
        while frame is not None:
            stack.append((frame.f_code.co_name, frame.f_code.co_filename))
            frame = frame.f_back
        inner = [name for name, path in stack[:2] if path == threading.__file__]
        waiting += inner == ["wait", "acquire"] and any(name == "_request" for name, _ in stack)
    return waiting


def test_no_more_calls_in_flight_than_the_limit(llm_server):
    # The first two answers are held until the other three calls are seen waiting in the client
    # for a slot (or, were the limit broken, until a third call reaches the server).
    held = threading.Event()
    llm_server.push(Reply(text="ok", hold=held), Reply(text="ok", hold=held))
    llm_server.default = lambda body: Reply(text="ok")
    client, calls = make_client(llm_server, max_in_flight=2)
    threads = [threading.Thread(target=ask, args=(client, calls)) for _ in range(5)]
    for t in threads:
        t.start()
    try:
        wait_until(
            lambda: (
                llm_server.max_in_flight > 2
                or (llm_server.in_flight == 2 and _waiting_for_a_slot(threads) == 3)
            ),
            "two calls at the server and three waiting for a slot",
        )
    finally:
        held.set()
        for t in threads:
            t.join(HANG)
    assert len(calls) == 5 and llm_server.max_in_flight == 2


def test_retry_after_forms():
    assert retry_after({"retry-after": "2.5"}) == 2.5
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({}) is None


def test_bandit_shifts_proposals_to_the_model_whose_children_improve(tmp_path):
    import random

    path = tmp_path / "bandit.json"
    bandit = ModelBandit(["good", "bad"], [1.0, 1.0], path)
    for i in range(40):
        model = "good" if i % 2 else "bad"
        bandit.proposed(f"g{i:04d}", model, 1.0)
        bandit.outcome(f"g{i:04d}", 0.9 if model == "good" else None)
    assert bandit.outcome("g0001", 0.5) is None  # told twice: counted once
    reloaded = ModelBandit(["good", "bad"], [1.0, 1.0], path)
    assert reloaded.stats() == {"good": (20, 20), "bad": (20, 0)}
    rng = random.Random(0)
    picks = [reloaded.choose(rng) for _ in range(200)]
    assert picks.count("good") > 150
    # A configured weight is a prior share: with no evidence, 3:1.
    fresh = ModelBandit(["a", "b"], [3.0, 1.0])
    picks = [fresh.choose(rng) for _ in range(2000)]
    assert 0.68 < picks.count("a") / 2000 < 0.82
