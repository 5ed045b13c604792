"""The LLM endpoint of a run: evolve.toml's [llm] table, then flags, then the environment.

    [llm]
    base_url = ""                        # empty: OPENAI_BASE_URL, else OpenAI's own API
    api_key_env = "OPENAI_API_KEY"       # the NAME of the variable that holds the key
    models = ["gpt-4.1-mini", "gpt-4.1"] # or model = "..." for one; empty: OPENAI_MODEL
    weights = [3.0, 1.0]                 # prior share of proposals per model (default: equal)
    max_usd = 20.0                       # stop new LLM proposals once the run has spent this
    max_in_flight = 4                    # LLM requests open at once, over every operator
    timeout = 300.0                      # seconds per request
    max_retries = 6                      # retries of one request (timeouts, 429, 5xx, resets)
    max_tokens = 8192                    # completion limit per answer (0: the server's default)
    temperature = 0.7                    # omitted from requests when unset (reasoning models)
    max_prompt_tokens = 24000            # prompts are trimmed to this, least important parts first
    tokenizer = "o200k_base"             # tiktoken encoding that counts prompt tokens; "approx": bytes/3
    insights_every = 10                  # condense the store into meta-insights every K children

    [llm.prices]                         # USD per million tokens: [prompt, completion]
    "gpt-4.1-mini" = [0.40, 1.60]

The key itself is only ever read from the environment, never from the file or a flag, and
never written anywhere (see `redact`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import EvolveError

# Local servers (vLLM, Ollama, llama.cpp) accept any key, but the openai client insists on one.
PLACEHOLDER_KEY = "not-needed"
KNOWN_KEYS = frozenset(
    {
        "model", "models", "weights", "base_url", "api_key_env", "max_usd", "max_in_flight", "timeout",
        "max_retries", "backoff", "max_backoff", "max_tokens", "temperature", "max_prompt_tokens",
        "tokenizer", "insights_every", "prices",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    prompt: float = 0.0
    completion: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


@dataclass(frozen=True)
class LLMConfig:
    """Everything the LLM operators need to reach an endpoint, checked."""

    models: tuple[str, ...]
    weights: tuple[float, ...]
    base_url: str | None = None  # None: the openai package's default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    max_usd: float | None = None
    max_in_flight: int = 4
    timeout: float = 300.0
    max_retries: int = 6
    backoff: float = 1.0  # first retry waits about this long; doubles per retry
    max_backoff: float = 60.0
    max_tokens: int = 8192
    temperature: float | None = None
    max_prompt_tokens: int = 24000
    tokenizer: str = "o200k_base"
    insights_every: int = 10
    prices: Mapping[str, Price] = field(default_factory=dict)

    def price(self, model: str) -> Price:
        """The model's price; unlisted models (a local server) cost nothing."""
        return self.prices.get(model, Price())

    def api_key(self, environ: Mapping[str, str] | None = None) -> str:
        """The key from the environment; a placeholder for a custom endpoint that needs none."""
        env = os.environ if environ is None else environ
        key = env.get(self.api_key_env, "")
        if key:
            return key
        if self.base_url:
            return PLACEHOLDER_KEY
        raise EvolveError(
            f"no API key: set {self.api_key_env}, or point [llm] base_url (or OPENAI_BASE_URL) at a "
            f"local server such as vLLM or Ollama"
        )


def _number(table: Mapping[str, Any], key: str, default: float | None, *, minimum: float = 0.0):
    value = table.get(key, default)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise EvolveError(f"evolve.toml: [llm] {key} must be a number, not {value!r}")
    if value < minimum:
        raise EvolveError(f"evolve.toml: [llm] {key} must be >= {minimum}, not {value!r}")
    return value


def _models(table: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    raw = table.get("models") or table.get("model") or env.get("OPENAI_MODEL", "")
    if isinstance(raw, str):
        raw = [m for m in raw.split(",")]
    if not isinstance(raw, Sequence) or not all(isinstance(m, str) for m in raw):
        raise EvolveError("evolve.toml: [llm] models must be a list of model names")
    models = tuple(dict.fromkeys(m.strip() for m in raw if m.strip()))
    if not models:
        raise EvolveError(
            "no LLM model: set [llm] model in evolve.toml, pass --llm-model, or set OPENAI_MODEL "
            "(or give the LLM operators weight 0 to run without an LLM)"
        )
    return models


def _prices(raw: Any) -> dict[str, Price]:
    if raw in (None, "", {}):
        return {}
    if not isinstance(raw, Mapping):
        raise EvolveError('evolve.toml: [llm.prices] must be a table of "model" = [prompt, completion]')
    out = {}
    for model, pair in raw.items():
        ok = (
            isinstance(pair, Sequence)
            and not isinstance(pair, str)
            and len(pair) == 2
            and all(isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0 for p in pair)
        )
        if not ok:
            raise EvolveError(
                f"evolve.toml: [llm.prices] {model!r} must be [prompt, completion] in USD per million tokens"
            )
        out[str(model)] = Price(float(pair[0]), float(pair[1]))
    return out


def load_config(table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> LLMConfig:
    """The checked config from the [llm] table (with flags already merged in, see `apply_flags`)."""
    env = os.environ if environ is None else environ
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise EvolveError(
            f"evolve.toml: unknown key(s) in [llm]: {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    models = _models(table, env)
    weights_raw = table.get("weights") or [1.0] * len(models)
    if (
        not isinstance(weights_raw, Sequence)
        or len(weights_raw) != len(models)
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights_raw)
    ):
        raise EvolveError(
            f"evolve.toml: [llm] weights must be {len(models)} positive numbers, one per model in "
            f"models = {list(models)}"
        )
    base_url = str(table.get("base_url") or env.get("OPENAI_BASE_URL") or "").strip() or None
    max_usd = _number(table, "max_usd", None)
    temperature = _number(table, "temperature", None)
    tokenizer = str(table.get("tokenizer") or "o200k_base")
    return LLMConfig(
        models=models,
        weights=tuple(float(w) for w in weights_raw),
        base_url=base_url,
        api_key_env=str(table.get("api_key_env") or "OPENAI_API_KEY"),
        max_usd=None if max_usd is None or max_usd == 0 else float(max_usd),
        max_in_flight=int(_number(table, "max_in_flight", 4, minimum=1)),
        timeout=float(_number(table, "timeout", 300.0, minimum=0.001)),
        max_retries=int(_number(table, "max_retries", 6)),
        backoff=float(_number(table, "backoff", 1.0)),
        max_backoff=float(_number(table, "max_backoff", 60.0)),
        max_tokens=int(_number(table, "max_tokens", 8192)),
        temperature=None if temperature is None else float(temperature),
        max_prompt_tokens=int(_number(table, "max_prompt_tokens", 24000, minimum=1000)),
        tokenizer=tokenizer,
        insights_every=int(_number(table, "insights_every", 10)),
        prices=_prices(table.get("prices")),
    )


def parse_model_flags(values: Sequence[str]) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """`--llm-model NAME` or `--llm-model NAME=WEIGHT`, repeated: the models and, when any flag
    gave a weight, one weight per model (1 where none was given)."""
    models: list[str] = []
    weights: list[float] = []
    given = False
    for value in values:
        name, sep, weight = value.partition("=")
        name = name.strip()
        if not name:
            raise EvolveError(
                f"--llm-model {value!r}: give a model name, e.g. gpt-4.1-mini or gpt-4.1-mini=3"
            )
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            w = math.nan
        if not w > 0 or math.isinf(w):
            raise EvolveError(f"--llm-model {value!r}: the weight after '=' must be a positive number")
        given = given or bool(sep)
        models.append(name)
        weights.append(w)
    if len(set(models)) != len(models):
        raise EvolveError(f"--llm-model names a model twice: {', '.join(models)}")
    return tuple(models), (tuple(weights) if given else None)


def apply_flags(
    table: Mapping[str, Any],
    *,
    models: Sequence[str] = (),
    weights: Sequence[float] | None = None,
    base_url: str | None = None,
    max_usd: float | None = None,
) -> dict[str, Any]:
    """[llm] with `evolve run`'s flags laid over it (`--llm-model` repeated, see `parse_model_flags`,
    `--llm-base-url`, `--max-llm-usd`); pass the result as `settings.with_changes(llm=...)`."""
    out = dict(table)
    if models:
        out["models"] = list(models)
        out.pop("model", None)
        if weights is not None:
            out["weights"] = list(weights)
        else:
            out.pop("weights", None)  # the file's weights belonged to the file's models
    if base_url is not None:
        out["base_url"] = base_url
    if max_usd is not None:
        out["max_usd"] = float(max_usd)
    return out
