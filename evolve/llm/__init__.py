"""LLM operators through any OpenAI-compatible endpoint: config, client, prompts, answers, insights.

`operators` registers `llm_mutation` and `llm_crossover` with `evolve.operators` (the shim module
`evolve/operators/llm.py` imports it, so `available()` lists them).
"""

from .client import BudgetExhausted, Completion, LLMClient, LLMError, ModelBandit
from .config import LLMConfig, Price, apply_flags, load_config, parse_model_flags

__all__ = [
    "BudgetExhausted",
    "Completion",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "ModelBandit",
    "Price",
    "apply_flags",
    "load_config",
    "parse_model_flags",
]
