"""From an LLM answer to a committed child, with one repair round.

An answer is a `DESCRIPTION:` line, a `RATIONALE:` line and SEARCH/REPLACE blocks (genome.edits
parses them). When the answer is empty, cut off at the token limit, malformed, or does not apply
to the file, the LLM is shown what went wrong (genome's errors quote the closest lines of the file
with their numbers) and asked once more in the same conversation. A second unusable answer is a
failed proposal (`UnusableAnswer`, an OperatorError): recorded by the engine, never fatal.
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
    allow_no_changes: bool = False,
) -> Answer[T]:
    """Ask, apply; on an unusable answer ask once more with the error; raise UnusableAnswer after that.

    `apply` turns an Edit into the result (a committed child) and raises EditError when the edit
    does not apply; that error text goes back to the LLM as is."""
    conversation = [dict(m) for m in messages]
    completions: list[Completion] = []
    problem = ""
    for round_ in range(2):
        completion = client.complete(conversation, model, report)
        completions.append(completion)
        try:
            edit = interpret(completion, allow_no_changes=allow_no_changes)
            return Answer(apply(edit, completion), edit, tuple(completions))
        except EditError as exc:
            problem = str(exc)
        if round_ == 0:
            conversation += [
                {"role": "assistant", "content": completion.text},
                {"role": "user", "content": repair_message(problem)},
            ]
    first_line = problem.splitlines()[0] if problem else "unusable answer"
    raise UnusableAnswer(f"{model} gave no usable answer after a repair round: {first_line}")
