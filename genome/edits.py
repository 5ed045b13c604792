"""Edits as an LLM writes them: SEARCH/REPLACE blocks, or one complete file in a code fence.

The answer format (program.md shows it to the LLM):

    DESCRIPTION: one line saying what changes
    RATIONALE: a few sentences on why it should lower val_bpb

    <<<<<<< SEARCH
    lines copied exactly from train.py
    =======
    the lines that replace them
    >>>>>>> REPLACE

Tolerant where the LLM is sloppy and no meaning is at stake: CRLF, trailing whitespace, code fences
and prose around or inside blocks, a block indented as a whole (in a list, or a method body quoted
without its indentation), blank lines around a SEARCH part, a missing final newline, a file name
line above a block. Strict where it is ambiguous: a SEARCH that matches twice or nowhere, an
unclosed block, several candidate files. Every `EditError` is written to be sent back to the LLM:
it names the block and quotes the closest lines of the file with their numbers.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import EditError

DEFAULT_PATH = "train.py"
SEARCH_MARK = "<<<<<<< SEARCH"
DIVIDER_MARK = "======="
REPLACE_MARK = ">>>>>>> REPLACE"

_SEARCH = re.compile(r"^(\s*)<{5,9}\s*SEARCH\s*$", re.IGNORECASE)
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+.-]*)\s*$")
_FILENAME = re.compile(r"^\s*[`*#]*\s*([\w][\w./-]*\.(?:py|md|toml|txt|json|ya?ml|cfg))\s*[`*:]*\s*$")
_LABEL = re.compile(
    r"^[\s>*#_\-\d.)]*(description|summary|title|rationale|reason|why)[*_\s]*:[*_\s]*(.*)$", re.I
)
# A complete file sent instead of blocks must be at least this share of the original's lines.
WHOLE_FILE_MIN_SHARE = 0.5
_QUOTE_LIMIT = 12  # lines quoted from the file in an error


@dataclass(frozen=True)
class Block:
    """Replace the lines `search` (which must occur exactly once) with `replace`."""

    search: str
    replace: str
    path: str = DEFAULT_PATH


@dataclass(frozen=True)
class Edit:
    """A parsed answer: a one-line description, a rationale, and either blocks or a whole file."""

    description: str
    rationale: str = ""
    blocks: tuple[Block, ...] = ()
    whole_file: str | None = None
    path: str = DEFAULT_PATH  # the file `whole_file` replaces

    @property
    def paths(self) -> tuple[str, ...]:
        if self.whole_file is not None:
            return (self.path,)
        return tuple(dict.fromkeys(b.path for b in self.blocks))


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def _strip_fences(lines: list[str]) -> list[str]:
    """Drop code-fence lines at the start or end of a block part (an LLM fencing inside a block)."""
    while lines and _FENCE.match(lines[0]):
        lines = lines[1:]
    while lines and _FENCE.match(lines[-1]):
        lines = lines[:-1]
    return lines


def _dedent(lines: list[str], indent: str) -> list[str]:
    if not indent:
        return lines
    return [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines]


def _join(lines: list[str]) -> str:
    """Block text: every line ends with a newline, so "" deletes and "\\n" is one blank line."""
    return "".join(line + "\n" for line in lines)


def _lines(part: str) -> list[str]:
    """The lines of a block part (a final newline is optional)."""
    part = part.replace("\r\n", "\n")
    if part == "":
        return []
    return part[:-1].split("\n") if part.endswith("\n") else part.split("\n")


def _clean_label(value: str) -> str:
    return value.strip().strip("*_`").strip()


def _prose_summary(prose: list[str]) -> tuple[str, str]:
    """(description, rationale) from the answer's prose: labelled lines first, else the first line."""
    description = rationale = ""
    i = 0
    while i < len(prose):
        match = _LABEL.match(prose[i])
        if match:
            label, value = match.group(1).lower(), _clean_label(match.group(2))
            if label in ("description", "summary", "title") and not description:
                description = value
            elif label in ("rationale", "reason", "why") and not rationale:
                # The rationale runs on until a blank line.
                more = []
                while i + 1 < len(prose) and prose[i + 1].strip() and not _LABEL.match(prose[i + 1]):
                    i += 1
                    more.append(prose[i].strip())
                rationale = " ".join([value, *more]).strip()
        i += 1
    if not description:
        for line in prose:
            text = _clean_label(line.strip().lstrip("#>-* "))
            if text and not _LABEL.match(line):
                description = text
                break
    return description, rationale


def parse_response(text: str, default_path: str = DEFAULT_PATH) -> Edit:
    """Parse an LLM's answer into an Edit; raise EditError (with what to fix) when it has none."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    blocks: list[Block] = []
    prose: list[str] = []  # lines outside blocks and outside code fences
    fences: list[tuple[str, list[str]]] = []  # (language, lines) of fenced code outside blocks
    fence: tuple[str, list[str]] | None = None
    path = default_path
    i = 0
    while i < len(lines):
        line = lines[i]
        start = _SEARCH.match(line)
        if start:
            indent = start.group(1)
            search, replace, i = _read_block(lines, i, len(blocks) + 1)
            blocks.append(
                Block(
                    search=_join(_strip_fences(_dedent(search, indent))),
                    replace=_join(_strip_fences(_dedent(replace, indent))),
                    path=path,
                )
            )
            i += 1
            continue
        fence_match = _FENCE.match(line)
        if fence_match:
            if fence is None:
                fence = (fence_match.group(2).lower(), [])
            else:
                fences.append(fence)
                fence = None
        elif fence is not None:
            fence[1].append(line)
        else:
            named = _FILENAME.match(line)
            if named:
                path = named.group(1)
            else:
                prose.append(line)
        i += 1
    description, rationale = _prose_summary(prose)
    if blocks:
        return Edit(description=description, rationale=rationale, blocks=tuple(blocks))
    if fence is not None:
        raise EditError(
            "the answer ends inside an unclosed code block (was it cut off?); send the SEARCH/REPLACE "
            "blocks again, complete"
        )
    code = [f for f in fences if f[0] in ("", "python", "py", "python3") and any(s.strip() for s in f[1])]
    if len(code) == 1:
        return Edit(
            description=description,
            rationale=rationale,
            whole_file="\n".join(code[0][1]).rstrip("\n") + "\n",
            path=default_path,
        )
    if len(code) > 1:
        raise EditError(
            f"the answer has {len(code)} code blocks and no SEARCH/REPLACE blocks, so it is unclear which "
            f"one is the new {default_path}; send SEARCH/REPLACE blocks, or exactly one complete file"
        )
    raise EditError(
        f"no SEARCH/REPLACE blocks found; write each change as '{SEARCH_MARK}', the exact lines of "
        f"{default_path}, '{DIVIDER_MARK}', the new lines, '{REPLACE_MARK}'"
    )


def _read_block(lines: list[str], start: int, number: int) -> tuple[list[str], list[str], int]:
    """Read one block from the SEARCH marker at `start`; return (search, replace, index of REPLACE)."""
    search: list[str] = []
    replace: list[str] | None = None
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if _SEARCH.match(line):
            break
        if replace is None and _DIVIDER.match(line):
            replace = []
        elif _REPLACE.match(line):
            if replace is None:
                raise EditError(f"block {number} has no '{DIVIDER_MARK}' line between SEARCH and REPLACE")
            return search, replace, j
        elif replace is None:
            search.append(line)
        else:
            replace.append(line)
    missing = DIVIDER_MARK if replace is None else REPLACE_MARK
    raise EditError(f"block {number} is not closed: '{missing}' is missing (was the answer cut off?)")


def format_blocks(blocks: Iterable[Block]) -> str:
    """Blocks in the exact syntax `parse_response` reads (program.md's examples use it)."""
    out = []
    for block in blocks:
        search, replace = (_join(_lines(part)) for part in (block.search, block.replace))
        out.append(f"{SEARCH_MARK}\n{search}{DIVIDER_MARK}\n{replace}{REPLACE_MARK}")
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------
def _split(text: str) -> tuple[list[str], bool]:
    """Lines of `text` (LF) and whether it ended with a newline."""
    if text == "":
        return [], True
    final = text.endswith("\n")
    lines = text.split("\n")
    return (lines[:-1] if final else lines), final


def _quote(lines: list[str], start: int, stop: int) -> str:
    width = len(str(stop))
    shown = range(start, min(stop, start + _QUOTE_LIMIT))
    out = [f"  {n + 1:>{width}} | {lines[n]}" for n in shown]
    if stop - start > _QUOTE_LIMIT:
        out.append(f"  {'':>{width}} | ... ({stop - start - _QUOTE_LIMIT} more lines)")
    return "\n".join(out)


def _exact(lines: list[str], search: list[str]) -> list[int]:
    m = len(search)
    key = [s.rstrip() for s in search]
    return [
        i
        for i in range(len(lines) - m + 1)
        if lines[i].rstrip() == key[0] and all(lines[i + k].rstrip() == key[k] for k in range(m))
    ]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _shifted(lines: list[str], search: list[str]) -> list[tuple[int, str, int]]:
    """Windows that equal `search` up to one uniform change of indentation.

    Returns (start, prefix added, characters removed) per match: the file's lines are the SEARCH
    lines with `prefix` added (or with `removed` leading whitespace characters taken away)."""
    found = []
    m = len(search)
    for i in range(len(lines) - m + 1):
        shift: tuple[str, int] | None = None
        ok = True
        for k in range(m):
            a, b = lines[i + k].rstrip(), search[k].rstrip()
            if not a.strip() and not b.strip():
                continue
            if a.lstrip() != b.lstrip():
                ok = False
                break
            ia, ib = _indent(a), _indent(b)
            if ia.endswith(ib):
                this = (ia[: len(ia) - len(ib)], 0)
            elif ib.endswith(ia):
                this = ("", len(ib) - len(ia))
            else:
                ok = False
                break
            if shift is None:
                shift = this
            elif shift != this:
                ok = False
                break
        if ok and shift is not None and shift != ("", 0):
            found.append((i, shift[0], shift[1]))
    return found


def _reindent(lines: list[str], prefix: str, removed: int) -> list[str]:
    out = []
    for line in lines:
        if not line.strip():
            out.append("")
        elif prefix:
            out.append(prefix + line)
        else:
            lead = _indent(line)
            out.append(line[min(removed, len(lead)) :])
    return out


def _trim_blank(search: list[str], replace: list[str]) -> tuple[list[str], list[str]]:
    """Drop blank lines around the SEARCH part (and as many around REPLACE)."""
    head = 0
    while head < len(search) and not search[head].strip():
        head += 1
    tail = 0
    while tail < len(search) - head and not search[len(search) - 1 - tail].strip():
        tail += 1
    search = search[head : len(search) - tail]
    r_head = 0
    while r_head < min(head, len(replace)) and not replace[r_head].strip():
        r_head += 1
    replace = replace[r_head:]
    r_tail = 0
    while r_tail < min(tail, len(replace)) and not replace[len(replace) - 1 - r_tail].strip():
        r_tail += 1
    return search, replace[: len(replace) - r_tail]


def _closest(lines: list[str], search: list[str]) -> tuple[int, int, float]:
    """(start, stop, similarity) of the window of the file most like the SEARCH lines."""
    m = max(1, min(len(search), len(lines)))
    target = "\n".join(s.strip() for s in search)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    scored = []
    for i in range(len(lines) - m + 1):
        matcher.set_seq1("\n".join(s.strip() for s in lines[i : i + m]))
        scored.append((matcher.quick_ratio(), i))
    best = (0.0, 0)
    for _, i in sorted(scored, reverse=True)[:20]:
        matcher.set_seq1("\n".join(s.strip() for s in lines[i : i + m]))
        best = max(best, (matcher.ratio(), -i))
    start = -best[1]
    return start, start + m, best[0]


def _apply_one(lines: list[str], block: Block, number: int, path: str) -> list[str]:
    search = _lines(block.search)
    replace = [r.rstrip() for r in _lines(block.replace)]
    if not any(s.strip() for s in search):
        if not any(ln.strip() for ln in lines):  # a new (or empty) file: the block creates it
            while replace and not replace[0].strip():
                replace = replace[1:]
            while replace and not replace[-1].strip():
                replace = replace[:-1]
            return replace
        raise EditError(
            f"block {number}: the SEARCH part is empty; copy the exact lines of {path} that the "
            f"change replaces (to add code, quote the lines next to it and repeat them in REPLACE)"
        )
    trimmed = _trim_blank(search, replace)
    candidates = [(search, replace)] if trimmed[0] == search else [(search, replace), trimmed]
    for s, r in candidates:
        hits = _exact(lines, s)
        if len(hits) == 1:
            i = hits[0]
            return lines[:i] + r + lines[i + len(s) :]
        if len(hits) > 1:
            raise _ambiguous(lines, hits, len(s), number, path)
    for s, r in candidates:
        shifted = _shifted(lines, s)
        if len(shifted) == 1:
            i, prefix, removed = shifted[0]
            return lines[:i] + _reindent(r, prefix, removed) + lines[i + len(s) :]
        if len(shifted) > 1:
            raise _ambiguous(lines, [h[0] for h in shifted], len(s), number, path)
    s = candidates[-1][0]
    start, stop, ratio = _closest(lines, s)
    if not lines:
        raise EditError(f"block {number}: SEARCH cannot match: {path} is empty")
    return _raise_nowhere(lines, start, stop, ratio, number, path)


def _ambiguous(lines: list[str], hits: list[int], m: int, number: int, path: str) -> EditError:
    where = ", ".join(str(i + 1) if m == 1 else f"{i + 1}-{i + m}" for i in hits)
    quoted = "\n  ...\n".join(_quote(lines, i, i + m) for i in hits[:3])
    return EditError(
        f"block {number}: SEARCH matches {len(hits)} places in {path} (lines {where}); add neighbouring "
        f"lines to the SEARCH part so that it matches exactly one:\n{quoted}"
    )


def _raise_nowhere(lines: list[str], start: int, stop: int, ratio: float, number: int, path: str):
    raise EditError(
        f"block {number}: SEARCH matches nowhere in {path}. The closest lines ({ratio:.0%} similar) are:\n"
        f"{_quote(lines, start, stop)}\n"
        f"Copy the SEARCH lines exactly from {path} (without the line numbers and ' | ')."
    )


def apply_blocks(source: str, blocks: Iterable[Block], path: str = DEFAULT_PATH) -> str:
    """Apply blocks one after the other; the file keeps its line endings and final newline."""
    crlf = "\r\n" in source
    lines, final = _split(source.replace("\r\n", "\n"))
    for number, block in enumerate(blocks, 1):
        lines = _apply_one(lines, block, number, path)
    text = "\n".join(lines) + ("\n" if final and lines else "")
    return text.replace("\n", "\r\n") if crlf else text


def apply_edit(source: str, edit: Edit, path: str = DEFAULT_PATH) -> str:
    """The new content of `path` after `edit` (unchanged when the edit does not touch it)."""
    if edit.whole_file is None:
        return apply_blocks(source, [b for b in edit.blocks if b.path == path], path)
    if path != edit.path:
        return source
    new = edit.whole_file.replace("\r\n", "\n")
    old_lines = len(_split(source.replace("\r\n", "\n"))[0])
    new_lines = len(_split(new)[0])
    if old_lines and new_lines < WHOLE_FILE_MIN_SHARE * old_lines:
        raise EditError(
            f"the code block has {new_lines} lines but {path} has {old_lines}: it looks like a fragment, "
            f"not the complete file; send SEARCH/REPLACE blocks, or the whole {path}"
        )
    if not new.endswith("\n"):
        new += "\n"
    return new.replace("\n", "\r\n") if "\r\n" in source else new
