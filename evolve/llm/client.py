"""One chat-completions client per run: retries, calls in flight, spend cap, and a model bandit.

`LLMClient.complete` sends one conversation through the `openai` package to any compatible
endpoint and survives what a weekend of API traffic brings: timeouts, connection resets, 5xx and
429 (waiting as long as Retry-After says) are retried with exponential backoff and jitter; a 4xx
other than 429 is not (a wrong model name does not get better by asking again). Every attempt,
failed or not, is reported through the caller's `report` (the store's llm_calls table) with its
purpose, tokens and cost, and an answered one with the messages and the answer; a failed attempt
is recorded unusable with its error, an answered one is settled later by whoever reads the
answer. No text that leaves this module contains the API key.

`ModelBandit` picks the model of each proposal: Thompson sampling on "did the child beat its
best parent", scaled by the configured weights, so the models whose children improve get more
of the proposals while every model keeps being tried.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..operators.base import OperatorError
from .config import PLACEHOLDER_KEY, LLMConfig

if TYPE_CHECKING:
    import openai

log = logging.getLogger("evolve.llm")

ReportLLM = Callable[..., "int | None"]  # records one call, returns its row id
Messages = Sequence[Mapping[str, str]]
# Keys in other people's error messages (OpenAI echoes part of a wrong key back).
_KEY_LIKE = re.compile(r"\b(sk|pk|rk|or|key)-[A-Za-z0-9_\-*]{8,}")
MIN_SECRET_PIECE = 6  # characters: a longer piece of the key in a text is cut out
RETRY_AFTER_CAP = 600.0  # seconds: a server asking for longer is treated as asking for this


class LLMError(OperatorError):
    """An LLM call that failed for good (after retries, or a refusal that retrying can't fix)."""


class BudgetExhausted(LLMError):
    """The run's LLM spend reached --max-llm-usd: no new LLM proposals."""


@dataclass(frozen=True)
class Completion:
    """One successful answer and what it cost."""

    text: str
    model: str
    finish_reason: str  # "stop"; "length" when the answer was cut off at max_tokens
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float
    call: int | None = None  # its llm_calls row, to settle its outcome once the answer is read

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks us to wait (Retry-After as seconds or a date, or retry-after-ms)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(RETRY_AFTER_CAP, max(0.0, float(ms) / 1000))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(RETRY_AFTER_CAP, max(0.0, float(value)))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value.strip() else None
        if when is None:
            return None
        return min(RETRY_AFTER_CAP, max(0.0, when.timestamp() - time.time()))


class LLMClient:
    """A run's gate to the endpoint: shared by every LLM operator and proposal thread."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        environ: Mapping[str, str] | None = None,
        spent: float = 0.0,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.config = config
        self._key = config.api_key(os.environ if environ is None else environ)
        import openai  # here, not at the top: `evolve status` and runs without an LLM never load it

        # Our own retry loop records every attempt; the package's would hide them.
        self._client = openai.OpenAI(
            api_key=self._key, base_url=config.base_url, timeout=config.timeout, max_retries=0
        )
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        self._lock = threading.Lock()
        self._spent = float(spent)
        self._closed = threading.Event()
        self._jitter = random.Random()
        self._count = count_tokens or (lambda text: math.ceil(len(text.encode()) / 3))

    # -- money ---------------------------------------------------------------------------------
    @property
    def spent(self) -> float:
        with self._lock:
            return self._spent

    @property
    def exhausted(self) -> bool:
        """True once the run's spend reached max_usd (calls in flight may overshoot it a little)."""
        cap = self.config.max_usd
        return cap is not None and self.spent >= cap

    def check_budget(self) -> None:
        if self.exhausted:
            raise BudgetExhausted(
                f"LLM spend ${self.spent:.2f} reached the cap of ${self.config.max_usd:.2f} "
                f"(--max-llm-usd); raise it to let LLM operators propose again"
            )

    # -- secrets -------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """`text` without the API key, any piece of it (servers echo a wrong key's ends), or key-likes."""
        text = _KEY_LIKE.sub("[key]", text)
        key = self._key
        if key == PLACEHOLDER_KEY or len(key) < MIN_SECRET_PIECE:
            return text.replace(key, "[key]") if key and key != PLACEHOLDER_KEY else text
        out, i = [], 0
        while i < len(text):
            j = i + MIN_SECRET_PIECE
            if text[i:j] in key:
                while j < len(text) and text[i : j + 1] in key:
                    j += 1
                out.append("[key]")
                i = j
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    # -- calls ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop waiting between retries (a run that is stopping) and close the connection pool."""
        self._closed.set()
        self._client.close()

    def _backoff(self, attempt: int) -> float:
        base = self.config.backoff * (2**attempt)
        return min(self.config.max_backoff, base) * self._jitter.uniform(0.5, 1.0)

    def _request(self, model: str, messages: Messages) -> Any:
        kwargs: dict[str, Any] = {}
        if self.config.max_tokens:
            kwargs["max_tokens"] = self.config.max_tokens
        if self.config.temperature is not None:
            kwargs["temperature"] = self.config.temperature
        with self._slots:
            return self._client.chat.completions.create(model=model, messages=list(messages), **kwargs)

    def complete(self, messages: Messages, model: str, report: ReportLLM, purpose: str = "") -> Completion:
        """Send `messages` to `model`; retry what is worth retrying; raise LLMError when it gives up.

        `purpose` (mutation, crossover, repair, insights) is recorded with every attempt."""
        import openai

        self.check_budget()
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            start = time.monotonic()
            wait: float | None = self._backoff(attempt)
            try:
                response = self._request(model, messages)
                return self._finish(response, model, messages, time.monotonic() - start, report, purpose)
            except openai.APITimeoutError:
                error = f"timeout after {self.config.timeout:g}s"
            except openai.APIConnectionError as exc:
                error = f"connection error: {exc.__cause__ or exc}"
            except openai.RateLimitError as exc:
                asked = retry_after(exc.response.headers)
                wait = wait if asked is None else asked
                error = f"429 rate limited (retry after {wait:.1f}s): {_message(exc)}"
            except openai.APIStatusError as exc:
                error = f"{exc.status_code} {_message(exc)}"
                if exc.status_code < 500 and exc.status_code not in (408, 409):
                    wait = None  # a client error: asking again can't help
            except (openai.APIError, ValueError, TypeError, AttributeError, IndexError) as exc:
                error = f"unreadable response: {type(exc).__name__}: {exc}"
            error = self.redact(error)[:500]
            report(model=model, ok=False, purpose=purpose, latency=time.monotonic() - start, error=error,
                   outcome="unusable", why="the endpoint gave no answer")  # fmt: skip
            log.warning("LLM call to %s failed (attempt %d/%d): %s", model, attempt + 1, attempts, error)
            if wait is None or attempt + 1 == attempts:
                raise LLMError(f"LLM call to {model} failed after {attempt + 1} attempt(s): {error}")
            if self._closed.wait(wait):
                raise LLMError(f"LLM call to {model} abandoned: the run is stopping")
        raise AssertionError("unreachable")

    def _finish(
        self, response: Any, model: str, messages: Messages, latency: float, report: ReportLLM, purpose: str
    ) -> Completion:
        if isinstance(response, str):  # the package hands back a body it could not parse as JSON
            raise ValueError(f"not a chat completion: {response[:200]!r}")
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice and choice.message else None) or ""
        finish = (choice.finish_reason if choice else None) or ""
        usage = getattr(response, "usage", None)
        # Some servers send no usage: estimate it, so the cap still holds.
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        if prompt_tokens is None:
            prompt_tokens = sum(self._count(m.get("content") or "") for m in messages)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if completion_tokens is None:
            completion_tokens = self._count(text)
        cost = self.config.price(model).cost(prompt_tokens, completion_tokens)
        with self._lock:
            self._spent += cost
        call = report(
            model=model,
            ok=True,
            purpose=purpose,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            cost=cost,
            latency=latency,
            prompt=[{**m, "content": self.redact(m.get("content") or "")} for m in messages],
            answer=self.redact(text),
        )
        call = call if isinstance(call, int) else None
        return Completion(
            text, model, finish, int(prompt_tokens), int(completion_tokens), cost, latency, call
        )


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        body = body.get("error", body)
        if isinstance(body, Mapping):
            body = body.get("message", body)
    text = str(body if body else exc.message)
    return " ".join(text.split())[:300]


# -------------------------------------------------------------------------------------------------
# Choosing the model
# -------------------------------------------------------------------------------------------------
class ModelBandit:
    """Thompson sampling over models, scaled by the configured weights; state kept in a JSON file.

    Each model has a Beta(1 + wins, 1 + losses) belief about "its child beats its best parent".
    A proposal draws one sample per model and picks a model with probability proportional to
    weight * sample, so a configured weight stays a prior share and evidence shifts it."""

    def __init__(self, models: Sequence[str], weights: Sequence[float], path: Path | None = None) -> None:
        self.models = tuple(models)
        self.weights = dict(zip(self.models, weights, strict=True))
        self.path = path
        self._lock = threading.Lock()
        self._stats = {m: [0, 0] for m in self.models}  # model -> [trials, wins]
        self._pending: dict[str, list[Any]] = {}  # child id -> [model, best parent score]
        self._told: set[str] = set()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("ignoring unreadable bandit state %s", path)
            return
        for model, pair in data.get("stats", {}).items():
            if model in self._stats:
                self._stats[model] = [int(pair[0]), int(pair[1])]
        self._pending = {k: list(v) for k, v in data.get("pending", {}).items()}
        self._told = set(data.get("told", []))

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"stats": self._stats, "pending": self._pending, "told": sorted(self._told)}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a killed run leaves the old state or the new

    def choose(self, rng: random.Random) -> str:
        if len(self.models) == 1:
            return self.models[0]
        with self._lock:
            shares = [
                self.weights[m] * rng.betavariate(1 + wins, 1 + trials - wins)
                for m, (trials, wins) in self._stats.items()
            ]
        pick = rng.random() * sum(shares)
        for model, share in zip(self.models, shares, strict=True):
            pick -= share
            if pick <= 0:
                return model
        return self.models[-1]

    def proposed(self, child: str, model: str, best_parent: float | None) -> None:
        with self._lock:
            self._pending[child] = [model, best_parent]
            self._save()

    def outcome(self, child: str, score: float | None) -> bool | None:
        """Credit the model that wrote `child`; returns whether it improved (None: not ours/told)."""
        with self._lock:
            if child in self._told or child not in self._pending:
                return None
            model, best_parent = self._pending.pop(child)
            improved = score is not None and best_parent is not None and score < best_parent
            if model in self._stats:
                self._stats[model][0] += 1
                self._stats[model][1] += int(improved)
            self._told.add(child)
            self._save()
            return improved

    def stats(self) -> dict[str, tuple[int, int]]:
        """Per model: (children judged, children that improved on their best parent)."""
        with self._lock:
            return {m: (t, w) for m, (t, w) in self._stats.items()}
