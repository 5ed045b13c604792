"""analysis: a run in pandas, its pictures and its report; read-only, safe beside a live run.

    >>> import analysis
    >>> df = analysis.lineage(".")            # one row per individual
    >>> analysis.operator_stats(df)           # which operators pay
    >>> analysis.plots.progress(df)           # a matplotlib Figure

Names are loaded on first use, so `import analysis` does not import matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AnalysisError": "errors",
    "lineage": "frames",
    "evaluations": "frames",
    "ancestry": "frames",
    "descendants": "frames",
    "first_parent_chain": "frames",
    "leaderboard": "frames",
    "champion": "frames",
    "operator_stats": "frames",
    "island_stats": "frames",
    "lineage_from_git": "gitlineage",
    "build_report": "report",
    "write_report": "report",
}
_MODULES = ("frames", "gitlineage", "plots", "report")

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    else:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    globals()[name] = value
    return value
