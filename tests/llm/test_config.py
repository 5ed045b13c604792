"""The [llm] table, flags and OPENAI_* variables become one checked config; the key stays in the env."""

from __future__ import annotations

import pytest

from evolve.errors import EvolveError
from evolve.llm.config import PLACEHOLDER_KEY, Price, apply_flags, load_config


def test_the_file_wins_over_the_environment_and_flags_win_over_the_file():
    env = {"OPENAI_BASE_URL": "http://env/v1", "OPENAI_MODEL": "env-model", "OPENAI_API_KEY": "k"}
    assert load_config({}, env).models == ("env-model",)
    assert load_config({}, env).base_url == "http://env/v1"
    table = {"models": ["a", "b"], "weights": [3, 1], "base_url": "http://file/v1", "max_usd": 5}
    config = load_config(table, env)
    assert (
        config.models == ("a", "b") and config.weights == (3.0, 1.0) and config.base_url == "http://file/v1"
    )
    flagged = load_config(apply_flags(table, models=["c"], base_url="http://flag/v1", max_usd=2.5), env)
    assert flagged.models == ("c",) and flagged.weights == (1.0,)  # the file's weights were for a, b
    assert flagged.base_url == "http://flag/v1" and flagged.max_usd == 2.5


def test_prices_give_the_cost_of_a_call_and_unlisted_models_are_free():
    config = load_config({"model": "m", "prices": {"m": [0.4, 1.6]}}, {})
    assert config.price("m") == Price(0.4, 1.6)
    assert config.price("m").cost(1_000_000, 500_000) == pytest.approx(1.2)
    assert config.price("local").cost(10**6, 10**6) == 0.0


def test_the_key_comes_from_the_named_variable_and_local_servers_need_none():
    config = load_config({"model": "m", "api_key_env": "MY_LLM_KEY"}, {})
    assert config.api_key({"MY_LLM_KEY": "secret"}) == "secret"
    with pytest.raises(EvolveError, match="set MY_LLM_KEY"):
        config.api_key({})
    local = load_config({"model": "llama3", "base_url": "http://localhost:11434/v1"}, {})
    assert local.api_key({}) == PLACEHOLDER_KEY


@pytest.mark.parametrize(
    "table, message",
    [
        ({}, "no LLM model"),
        ({"model": "m", "weights": [1, 2]}, "weights must be 1 positive numbers"),
        ({"model": "m", "max_usd": "ten"}, "max_usd must be a number"),
        ({"model": "m", "prices": {"m": [1]}}, "must be \\[prompt, completion\\]"),
        ({"model": "m", "modle": "x"}, "unknown key"),
    ],
)
def test_mistakes_are_one_line_errors_that_say_what_to_fix(table, message):
    with pytest.raises(EvolveError, match=message):
        load_config(table, {})


def test_llm_model_flags_take_optional_weights_and_replace_the_files_models():
    from evolve.llm.config import parse_model_flags

    table = {"models": ["a", "b"], "weights": [3, 1], "prices": {"a": [1.0, 2.0]}}
    models, weights = parse_model_flags(["big=3", "small"])
    assert (models, weights) == (("big", "small"), (3.0, 1.0))
    config = load_config(apply_flags(table, models=models, weights=weights), {"OPENAI_API_KEY": "k"})
    assert config.models == ("big", "small") and config.weights == (3.0, 1.0)
    assert config.price("a") == Price(1.0, 2.0)  # the rest of the table stays
    plain = load_config(apply_flags(table, models=("c", "d")), {})
    assert plain.weights == (1.0, 1.0)  # the file's 3:1 was for a and b, not for c and d
    for bad in (["=2"], ["m=0"], ["m=x"], ["m=inf"], ["m", "m=2"]):
        with pytest.raises(EvolveError, match="--llm-model"):
            parse_model_flags(bad)
