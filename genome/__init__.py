"""genome: one individual as git sees it.

The workspace repository, `Genome` records on `evo/<run>/<id>` branches with trailers, edits
(SEARCH/REPLACE blocks or a whole file), merge crossover, the hyperparameter block, the static
guard, worktrees, the lineage rebuilt from git, and export of a branch. `genome/baseline/train.py`
is generation 0. Nothing here trains a model or talks to an LLM.
"""

from .edits import Block, Edit, apply_blocks, apply_edit, format_blocks, parse_response
from .errors import EditError, GenomeError
from .export import ExportResult, export, resolve_genome_id
from .guard import GuardResult, check, check_source
from .hyperparams import Hyperparam, commit_hyperparams, parse_hyperparams, rewrite_hyperparams
from .lineage import ancestors, rebuild_lineage, runs, verify_lineage
from .merge import ConflictHunk, MergeResult, MergeStatus, commit_merge, merge_crossover
from .record import BASELINE_ID, Genome, branch_name, sort_key
from .repo import GenomeRepo
from .settings import Settings, load_settings, read_settings
from .workspace import Workspace, find_workspace, init_workspace, open_workspace
from .worktrees import WorktreePool

__all__ = [
    "BASELINE_ID",
    "Block",
    "ConflictHunk",
    "Edit",
    "EditError",
    "ExportResult",
    "Genome",
    "GenomeError",
    "GenomeRepo",
    "GuardResult",
    "Hyperparam",
    "MergeResult",
    "MergeStatus",
    "Settings",
    "Workspace",
    "WorktreePool",
    "ancestors",
    "apply_blocks",
    "apply_edit",
    "branch_name",
    "check",
    "check_source",
    "commit_hyperparams",
    "commit_merge",
    "export",
    "find_workspace",
    "format_blocks",
    "init_workspace",
    "load_settings",
    "merge_crossover",
    "open_workspace",
    "parse_hyperparams",
    "parse_response",
    "read_settings",
    "rebuild_lineage",
    "resolve_genome_id",
    "rewrite_hyperparams",
    "runs",
    "sort_key",
    "verify_lineage",
]
