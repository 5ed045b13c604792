"""The columns of `analysis.lineage()`'s frame, in order: frames builds it from the store and
gitlineage from the git branches alone; its own module, so that gitlineage need not import frames
(frames imports gitlineage for a workspace without a store)."""

from __future__ import annotations

LINEAGE_COLUMNS = (
    "id", "run", "commit", "branch", "parents", "parent", "kind", "origin", "operator", "island", "generation",
    "status", "decision", "created", "started", "finished", "depth", "val_bpb_mean", "val_bpb_std",
    "val_bpb_n", "bound", "confirmation", "confirmed_bpb_mean", "confirmed_bpb_n", "confirmed_seeds",
    "delta_parent", "delta_baseline", "validation_depth", "validation_bpb_mean",
    "validation_bpb_n", "validation_delta_baseline", "verdict", "description", "guard_reason",
    "evaluations", "failures", "gpu_seconds", "llm_prompt_tokens", "llm_completion_tokens",
    "llm_tokens", "llm_cost",
)  # fmt: skip
