"""A corpus of realistic, messy LLM answers (llm_responses/), each applied to the train.py beside them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from genome import EditError, apply_edit, check_source, parse_response

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CORPUS = Path(__file__).parent / "llm_responses"
EXPECTED = tomllib.loads((CORPUS / "expected.toml").read_text())
SOURCE = (CORPUS / "train.py").read_text()


def answer(name: str) -> str:
    return (CORPUS / name).read_bytes().decode()  # bytes: keep the CRLF answer's line endings


def test_the_corpus_is_large_and_fully_specified():
    files = sorted(p.name for p in CORPUS.glob("*.txt"))
    assert len(files) >= 20
    assert files == sorted(EXPECTED)
    assert "\r\n" in answer("03_crlf.txt") and not answer("12_no_final_newline.txt").endswith("\n")
    assert check_source(SOURCE).ok


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_answer_gives_the_expected_file_or_error(name):
    spec = EXPECTED[name]
    if "error" in spec:
        with pytest.raises(EditError) as err:
            edit = parse_response(answer(name))
            apply_edit(SOURCE, edit)
        for fragment in spec["error"]:
            assert fragment in str(err.value), str(err.value)
        return
    edit = parse_response(answer(name))
    assert edit.description == spec["description"]
    assert edit.rationale.startswith(spec.get("rationale_starts", ""))
    assert (edit.whole_file is not None) == spec.get("whole_file", False)
    result = apply_edit(SOURCE, edit)
    if spec.get("unchanged"):
        assert result == SOURCE
        return
    assert result != SOURCE
    for text in spec.get("contains", []):
        assert text in result
    for text in spec.get("absent", []):
        assert text not in result
    assert check_source(result).ok, check_source(result).reason  # still compiles, still honest


def test_every_applicable_answer_commits_as_a_child(repo):
    parent = repo.baseline()
    for name, spec in sorted(EXPECTED.items()):
        if "error" in spec:
            with pytest.raises(EditError):
                repo.apply_edit(parent, answer(name))
        elif spec.get("unchanged"):
            with pytest.raises(EditError, match="changes nothing"):
                repo.apply_edit(parent, answer(name))
        else:
            child = repo.apply_edit(parent, answer(name))
            assert child.description == spec["description"]
            assert child.parents == (parent.id,)
            assert repo.read(child) == apply_edit(SOURCE, parse_response(answer(name)))
    assert not repo.user_changes()
