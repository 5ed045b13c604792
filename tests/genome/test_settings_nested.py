"""evolve.toml's writer: nested tables such as [llm.prices] and awkward keys and strings round-trip."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genome import GenomeError, load_settings
from genome.settings import Settings, to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# TOML can't hold surrogates, NaN (it never equals itself) or integers beyond 64 bits.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALAR = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    TEXT,
)
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=3))
TABLE = st.recursive(
    st.dictionaries(TEXT, VALUE, max_size=4),
    lambda inner: st.dictionaries(TEXT, st.one_of(VALUE, inner), max_size=4),
    max_leaves=12,
)


def test_an_llm_table_with_prices_is_written_as_a_sub_table_and_read_back(tmp_path):
    llm = {"models": ["gpt-4.1-mini", "gpt-4.1"], "max_usd": 20.0,
           "prices": {"gpt-4.1-mini": [0.4, 1.6], "gpt-4.1": [2.0, 8.0]}}  # fmt: skip
    path = tmp_path / "evolve.toml"
    path.write_text(to_toml(Settings(name="r", profile="tiny", llm=llm)))
    text = path.read_text()
    assert "[llm.prices]" in text
    assert '"gpt-4.1-mini" = [0.4, 1.6]' in text
    loaded = load_settings(path)
    assert loaded.llm["prices"] == llm["prices"]
    assert loaded.llm["max_usd"] == 20.0 and loaded.llm["models"] == llm["models"]


@settings(max_examples=150, deadline=None)
@given(TABLE)
def test_any_nested_table_of_scalars_round_trips(extra):
    llm = {"model": "m", "extra": extra}
    text = to_toml(Settings(name="r", profile="tiny", llm=llm))
    assert tomllib.loads(text)["llm"]["extra"] == extra


def test_values_toml_cannot_hold_are_refused_with_a_clear_error():
    with pytest.raises(GenomeError, match="cannot hold"):
        to_toml(Settings(name="r", profile="tiny", llm={"bad": [{"a": 1}]}))
