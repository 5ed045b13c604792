"""The prompt budget: counting tokens (tiktoken, or bytes / 3 offline) and fitting parts into it.

A prompt is a system message and a user message made of parts. Some parts are required (the
parent's full train.py, which the SEARCH blocks must match; the conflicts to resolve; the
setting and the rule; the task); the others are context ranked by importance, each a list of
items, most useful first. `fit` keeps the prompt within `max_prompt_tokens` as counted by
tiktoken: it drops items from the end of the least important part first, so the prompt shrinks
the way a researcher would skim.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("evolve.llm")

Counter = Callable[[str], int]
REQUIRED = 100  # parts at this priority are never trimmed
APPROX = "approx"
ENCODING_TIMEOUT = 15.0  # seconds to load (maybe download) a tiktoken encoding before counting approximately


# ---------------------------------------------------------------------------------------------
# Counting tokens
# ---------------------------------------------------------------------------------------------
_ENCODINGS: dict[str, Counter] = {}
_ENCODINGS_LOCK = threading.Lock()
_WARNED = False  # the fallback is said once per process, whichever encodings fail


def approx_tokens(text: str) -> int:
    """About three bytes per token: code and English under modern BPEs average 3.5-4, so it errs long."""
    return math.ceil(len(text.encode()) / 3)


def _load_encoding(name: str, timeout: float):
    """tiktoken's encoding `name`, or an exception; tiktoken downloads a file it has not cached,
    with no timeout of its own, so a firewalled host could wait forever: give up after `timeout`."""
    found: dict[str, object] = {}

    def load() -> None:
        try:
            import tiktoken

            found["encoding"] = tiktoken.get_encoding(name)
        except Exception as exc:
            found["error"] = exc

    thread = threading.Thread(target=load, name=f"tiktoken-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"not loaded in {timeout:g} s (offline, and not in tiktoken's cache?)")
    if "error" in found:
        raise found["error"]  # type: ignore[misc]
    return found["encoding"]


def token_counter(name: str) -> Counter:
    """A tiktoken encoding's counter (cached); `approx`, or an encoding that can't load (offline,
    not cached): bytes / 3, with one short warning per process. Never raises."""
    with _ENCODINGS_LOCK:
        if name not in _ENCODINGS:
            counter: Counter = approx_tokens
            if name != APPROX:
                try:
                    encoding = _load_encoding(name, ENCODING_TIMEOUT)
                    counter = lambda text: len(encoding.encode(text, disallowed_special=()))
                except Exception as exc:  # offline: the reason is one word, not urllib3's paragraph
                    global _WARNED
                    if not _WARNED:
                        log.warning(
                            "tiktoken %r unavailable (%s): counting prompt tokens as bytes/3; "
                            '[llm] tokenizer = "approx" silences this', name, type(exc).__name__,
                        )  # fmt: skip
                        _WARNED = True
            _ENCODINGS[name] = counter
        return _ENCODINGS[name]


# ---------------------------------------------------------------------------------------------
# Parts and the budget
# ---------------------------------------------------------------------------------------------
@dataclass
class Part:
    """A section of the user message: a heading, an optional intro, and items (most useful first)."""

    title: str
    items: list[str]
    priority: int = REQUIRED
    intro: str = ""

    def render(self) -> str:
        if not self.items and self.priority < REQUIRED:
            return ""
        body = "\n\n".join(self.items)
        head = f"## {self.title}\n" if self.title else ""
        return head + (f"{self.intro}\n\n" if self.intro else "") + body


@dataclass(frozen=True)
class Prompt:
    messages: tuple[dict[str, str], ...]
    tokens: int
    trimmed: tuple[str, ...] = ()  # "title: n items dropped" for each part that lost items


def fit(system: str, parts: Sequence[Part], budget: int, count: Counter) -> Prompt:
    """Render the parts, dropping the least important items until the prompt fits `budget` tokens."""
    parts = [Part(p.title, list(p.items), p.priority, p.intro) for p in parts]
    sizes = [count(p.render()) for p in parts]
    fixed = count(system) + 16  # message framing
    dropped = [0] * len(parts)
    while fixed + sum(sizes) > budget:
        candidates = [i for i, p in enumerate(parts) if p.priority < REQUIRED and p.items]
        if not candidates:
            log.warning("prompt needs %d tokens, over the budget of %d", fixed + sum(sizes), budget)
            break
        i = min(candidates, key=lambda j: parts[j].priority)
        parts[i].items.pop()
        dropped[i] += 1
        sizes[i] = count(parts[i].render())
    user = "\n\n".join(text for p in parts if (text := p.render()))
    trimmed = tuple(f"{p.title}: {n} dropped" for p, n in zip(parts, dropped, strict=True) if n)
    messages = ({"role": "system", "content": system}, {"role": "user", "content": user})
    return Prompt(messages, fixed + sum(sizes), trimmed)
