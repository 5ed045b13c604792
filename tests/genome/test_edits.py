"""SEARCH/REPLACE and whole-file edits: parsing, applying, tolerance of sloppiness, strictness on ambiguity."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from genome.edits import Block, Edit, apply_blocks, apply_edit, format_blocks, parse_response
from genome.errors import EditError

SOURCE = """import torch

LR = 0.01  # learning rate
STEPS = 100


class Model:
    def forward(self, x):
        x = x + 1
        return x * 2

    def backward(self, x):
        x = x + 1
        return x
"""

# Lines that cannot be mistaken for block markers or fences, without trailing whitespace.
line = st.text(alphabet="abcdefxyz_():.,+-*/0123456789 ", max_size=24).map(str.rstrip)
indented = st.tuples(st.sampled_from(["", "    ", "        "]), line).map(lambda t: (t[0] + t[1]).rstrip())
files = st.lists(indented, min_size=1, max_size=30)


def block_text(lines: list[str]) -> str:
    """Block text of these lines (each ends with a newline)."""
    return "".join(x + "\n" for x in lines)


def count(lines: list[str], search: list[str]) -> int:
    m = len(search)
    return sum(lines[i : i + m] == search for i in range(len(lines) - m + 1))


def response(search: str, replace: str, indent: str = "", newline: str = "\n") -> str:
    body = f"DESCRIPTION: a change\n\n{format_blocks([Block(search, replace)])}"
    body = "\n".join(indent + ln if ln else ln for ln in body.split("\n"))
    return body.replace("\n", newline)


@settings(max_examples=150, deadline=None)
@given(files, st.data(), st.lists(indented, max_size=5))
def test_a_block_built_from_a_unique_slice_replaces_exactly_that_slice(lines, data, new):
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(i + 1, len(lines)))
    search = lines[i:j]
    assume(any(s.strip() for s in search) and count(lines, search) == 1)
    text = "\n".join(lines) + "\n"
    out = apply_blocks(text, [Block(block_text(search), block_text(new))])
    expected = lines[:i] + new + lines[j:]
    assert out == ("\n".join(expected) + "\n" if expected else "")


@settings(max_examples=100, deadline=None)
@given(files, st.data(), st.lists(indented, min_size=1, max_size=5))
def test_replace_then_replace_back_restores_the_file(lines, data, new):
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(i + 1, len(lines)))
    search = lines[i:j]
    assume(any(s.strip() for s in search) and any(s.strip() for s in new) and count(lines, search) == 1)
    text = "\n".join(lines) + "\n"
    changed = apply_blocks(text, [Block(block_text(search), block_text(new))])
    assume(count(changed.split("\n")[:-1], new) == 1)
    assert apply_blocks(changed, [Block(block_text(new), block_text(search))]) == text


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(indented, min_size=1, max_size=6), st.lists(indented, max_size=6)),
        min_size=1,
        max_size=4,
    )
)
def test_format_then_parse_gives_the_same_blocks(pairs):
    pairs = [(s, r) for s, r in pairs if any(x.strip() for x in s)]
    assume(pairs)
    blocks = [Block(block_text(s), block_text(r)) for s, r in pairs]
    edit = parse_response("DESCRIPTION: several changes\nRATIONALE: why not\n\n" + format_blocks(blocks))
    assert edit.blocks == tuple(blocks)
    assert edit.description == "several changes" and edit.rationale == "why not"


@settings(max_examples=100, deadline=None)
@given(files, st.data(), st.lists(indented, max_size=4))
def test_crlf_indentation_and_trailing_spaces_in_the_answer_change_nothing(lines, data, new):
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(i + 1, len(lines)))
    search = lines[i:j]
    assume(any(s.strip() for s in search) and count(lines, search) == 1)
    text = "\n".join(lines) + "\n"
    clean = apply_edit(text, parse_response(response(block_text(search), block_text(new))))
    sloppy = [
        response(block_text(search), block_text(new), newline="\r\n"),
        response(block_text(search), block_text(new), indent="    "),
        response(block_text([s + "  " for s in search]), block_text([r + "\t" for r in new])),
    ]
    for answer in sloppy:
        assert apply_edit(text, parse_response(answer)) == clean


@settings(max_examples=60, deadline=None)
@given(
    st.lists(indented, min_size=1, max_size=4), st.lists(indented, max_size=6), st.lists(indented, max_size=6)
)
def test_a_search_found_twice_is_rejected_with_both_places(chunk, before, between):
    assume(any(s.strip() for s in chunk))
    lines = before + chunk + between + chunk
    hits = count(lines, chunk)
    with pytest.raises(EditError) as err:
        apply_blocks("\n".join(lines) + "\n", [Block(block_text(chunk), "new = 1")])
    assert f"matches {hits} places" in str(err.value)
    first = lines.index(chunk[0]) + 1 if len(chunk) == 1 else None
    if first is not None:
        assert f"{first} | {chunk[0]}" in str(err.value)


def test_nowhere_quotes_the_closest_lines_with_numbers():
    with pytest.raises(EditError) as err:
        apply_blocks(SOURCE, [Block("LR = 0.1  # learning rate\nSTEPS = 100", "LR = 0.2")])
    message = str(err.value)
    assert "matches nowhere" in message
    assert "3 | LR = 0.01  # learning rate" in message and "4 | STEPS = 100" in message


def test_search_indented_more_than_the_file_is_shifted_back():
    edit = parse_response(
        "DESCRIPTION: d\n<<<<<<< SEARCH\n            x = x + 1\n            return x * 2\n=======\n"
        "            x = x + 2\n            return x * 2\n>>>>>>> REPLACE\n"
    )
    out = apply_edit(SOURCE, edit)
    assert "        x = x + 2\n        return x * 2\n" in out
    assert out.count("x = x + 1") == 1  # the other method is untouched


def test_a_uniformly_shifted_search_that_fits_two_places_is_ambiguous():
    edit = parse_response("DESCRIPTION: d\n<<<<<<< SEARCH\nx = x + 1\n=======\nx = x + 3\n>>>>>>> REPLACE\n")
    with pytest.raises(EditError, match=r"matches 2 places .*lines 9, 13"):
        apply_edit(SOURCE, edit)


def test_crlf_file_keeps_crlf_and_missing_final_newline_is_kept():
    crlf = SOURCE.replace("\n", "\r\n")
    out = apply_blocks(crlf, [Block("STEPS = 100", "STEPS = 200")])
    assert out == crlf.replace("STEPS = 100", "STEPS = 200")
    bare = SOURCE.rstrip("\n")
    assert apply_blocks(bare, [Block("STEPS = 100", "STEPS = 200")]) == bare.replace("100", "200")


def test_empty_search_creates_a_new_file_but_is_rejected_on_an_existing_one():
    assert apply_blocks("", [Block("", "print('hi')\n")]) == "print('hi')\n"
    with pytest.raises(EditError, match="SEARCH part is empty"):
        apply_blocks(SOURCE, [Block("", "print('hi')")])


def test_blocks_apply_in_order_and_name_the_failing_block():
    blocks = [
        Block("LR = 0.01  # learning rate", "LR = 0.02  # learning rate"),
        Block("LR = 0.01", "LR = 0.03"),
    ]
    with pytest.raises(EditError, match="block 2: SEARCH matches nowhere"):
        apply_blocks(SOURCE, blocks)


def test_unclosed_or_malformed_blocks_are_rejected():
    with pytest.raises(EditError, match="block 1 has no '======='"):
        parse_response("<<<<<<< SEARCH\nLR = 1\n>>>>>>> REPLACE\n")
    with pytest.raises(EditError, match="block 2 is not closed"):
        parse_response(format_blocks([Block("a", "b")]) + "<<<<<<< SEARCH\nLR = 1\n=======\n")
    with pytest.raises(EditError, match="unclosed code block"):
        parse_response("DESCRIPTION: x\n```python\nimport torch\n")


def test_whole_file_replacement_and_fragment_rejection():
    new = SOURCE.replace("STEPS = 100", "STEPS = 300")
    edit = parse_response(f"DESCRIPTION: more steps\n\nHere is the file:\n```python\n{new}```\n")
    assert edit.whole_file == new and edit.paths == ("train.py",)
    assert apply_edit(SOURCE, edit) == new
    with pytest.raises(EditError, match="looks like a fragment"):
        apply_edit(SOURCE, Edit("x", whole_file="STEPS = 300\n"))


def test_file_name_line_sets_the_block_path():
    edit = parse_response(
        "DESCRIPTION: d\nmodel.py\n```python\n" + format_blocks([Block("a = 1", "a = 2")]) + "```\n"
    )
    assert edit.paths == ("model.py",)
    assert apply_edit(SOURCE, edit, "train.py") == SOURCE
