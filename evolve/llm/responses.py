"""From an LLM answer to a committed child, with one repair round.

An answer is a `DESCRIPTION:` line, a `RATIONALE:` line and SEARCH/REPLACE blocks (genome.edits
parses them). When the answer is empty, cut off at the token limit, malformed, or does not apply
to the file, the LLM is shown what went wrong (genome's errors quote the closest lines of the file
with their numbers) and asked once more in the same conversation. A second unusable answer is a
failed proposal (`UnusableAnswer`, an OperatorError): recorded by the engine, never fatal.

Each answer's call is settled in the store once it has been read: `usable` (applied as it was),
`repaired` (unusable, with why, but the repair answer that followed was applied) or `unusable`
(with why). The first call carries the operator's purpose, the second `repair`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from genome.edits import Edit, parse_response
from genome.errors import EditError

from ..operators.base import OperatorError
from .client import Completion, LLMClient, ReportLLM
from .prompts import NO_CHANGES

Settle = Callable[[int, str, str], None]
REPAIR = "repair"

T = TypeVar("T")
_DESCRIPTION = re.compile(r"^[\s>*#_-]*description[*_\s]*:[*_\s]*(.*)$", re.IGNORECASE)
_RATIONALE = re.compile(r"^[\s>*#_-]*rationale[*_\s]*:[*_\s]*(.*)$", re.IGNORECASE)
_NO_CHANGES = re.compile(rf"^[\s*`_]*{NO_CHANGES}[\s*`_.!]*$", re.IGNORECASE | re.MULTILINE)
_SEARCH_MARK = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$", re.IGNORECASE | re.MULTILINE)


class UnusableAnswer(OperatorError):
    """Two answers in a row that could not be turned into a child."""


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What `converse` produced: the applied result and the answers it took (one or two)."""

    result: T
    edit: Edit | None  # None: the LLM said NO CHANGES (a clean merge kept as it is)
    completions: tuple[Completion, ...]

    @property
    def repaired(self) -> bool:
        return len(self.completions) > 1


def _first(pattern: re.Pattern[str], text: str) -> str:
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            return match.group(1).strip().strip("*_`").strip()
    return ""


def interpret(completion: Completion, *, allow_no_changes: bool = False) -> Edit | None:
    """The Edit in an answer (None for an allowed NO CHANGES), or EditError saying what to fix."""
    text = completion.text
    if not text.strip():
        raise EditError(
            "the answer was empty; answer with a DESCRIPTION line, a RATIONALE line and SEARCH/REPLACE blocks"
        )
    if completion.truncated:
        raise EditError(
            f"the answer was cut off at the token limit ({completion.completion_tokens} tokens); send the "
            f"whole answer again, shorter: fewer blocks, each SEARCH part only the lines that change plus "
            f"one line of context, and no complete file"
        )
    if allow_no_changes and _NO_CHANGES.search(text) and not _SEARCH_MARK.search(text):
        return None
    return parse_response(text)


def describe(completion: Completion, edit: Edit | None) -> tuple[str, str]:
    """(description, rationale) of an answer, whether or not it has blocks."""
    if edit is not None and edit.description:
        return edit.description, edit.rationale
    description = _first(_DESCRIPTION, completion.text)
    rationale = edit.rationale if edit is not None else _first(_RATIONALE, completion.text)
    return description, rationale


def repair_message(problem: str) -> str:
    return (
        f"Your answer could not be used: {problem}\n\n"
        "Send the complete corrected answer (not only the part that failed): a DESCRIPTION line, "
        "a RATIONALE line, then SEARCH/REPLACE blocks whose SEARCH parts match the file exactly."
    )


def converse(
    client: LLMClient,
    messages: Sequence[Mapping[str, str]],
    model: str,
    report: ReportLLM,
    apply: Callable[[Edit | None, Completion], T],
    *,
    purpose: str,
    settle: Settle = lambda *_: None,
    allow_no_changes: bool = False,
) -> Answer[T]:
    """Ask, apply; on an unusable answer ask once more with the error; raise UnusableAnswer after that.

    `apply` turns an Edit into the result (a committed child) and raises EditError when the edit
    does not apply; that error text goes back to the LLM as is. Every answer's call is settled."""
    conversation = [dict(m) for m in messages]
    completions: list[Completion] = []
    problems: list[str] = []
    result: Answer[T] | None = None
    try:
        for round_ in range(2):
            completion = client.complete(conversation, model, report, purpose if round_ == 0 else REPAIR)
            completions.append(completion)
            try:
                edit = interpret(completion, allow_no_changes=allow_no_changes)
                result = Answer(apply(edit, completion), edit, tuple(completions))
                return result
            except EditError as exc:
                problems.append(str(exc))
            if round_ == 0:
                conversation += [
                    {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": repair_message(problems[-1])},
                ]
        first_line = problems[-1].splitlines()[0] if problems[-1] else "unusable answer"
        raise UnusableAnswer(f"{model} gave no usable answer after a repair round: {first_line}")
    finally:
        _settle(settle, completions, problems, result is not None)


def _settle(settle: Settle, completions: Sequence[Completion], problems: Sequence[str], used: bool) -> None:
    """Record each answer's outcome: the last one usable when it was applied, the ones before it
    repaired (then) or unusable, each with the first line of what was wrong with it."""
    for k, completion in enumerate(completions):
        if completion.call is None:
            continue
        last = k == len(completions) - 1
        if used and last:
            settle(completion.call, "usable", "")
            continue
        why = problems[k].splitlines()[0] if k < len(problems) and problems[k] else "not read (an error)"
        settle(completion.call, "repaired" if used else "unusable", why)
