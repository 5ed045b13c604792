"""Registers the LLM operators (`llm_mutation`, `llm_crossover`), which live in `evolve.llm`."""

from evolve.llm.operators import LLMCrossover, LLMMutation

__all__ = ["LLMCrossover", "LLMMutation"]
