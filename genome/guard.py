"""The static guard: what a child must satisfy before it is trained.

`check(repo, parent, child)` answers with a `GuardResult` whose `reason` says, in one line, what
was wrong. The rules: every changed file is a mutable one (train.py by default) and a regular
file; every mutable Python file compiles; and the code
- reaches no validation data and none of prepare's private files (`val.bin`, `.idx`,
  `manifest.json`, `tokenizer.json`, `prepared/`, `cfg.data_dir`, `make_loader("val")`, ...);
- imports only `prepare` and its public names, and never patches them: no assignment to or
  deletion of prepare's attributes, directly or through an alias, `setattr`, `sys.modules`,
  `__globals__`, `exec` or a `"prepare.x"` string handed to some patcher;
- takes depth, budget and seed from `prepare.run_config()`: the call is present, no `EVOLVE_*`
  variable is read, the config is not modified or copied with changes, no constant seeds or
  DEPTH-like constants override it;
- swaps no library code the metric runs on: an imported module's attributes may be set to
  constants (`torch.backends.cudnn.benchmark = True`), never to functions or other objects
  (`F.cross_entropy = ...`, `torch.Tensor.sum = ...`);
- does not reach into the interpreter for prepare's state: no `ctypes`, no garbage-collector or
  frame introspection (`gc.get_objects`, `sys._getframe`, `f_globals`, ...).

This is a static check: it stops the obvious and the accidental. The trainer remains the judge:
it checks the reported depth and budget, times the run, and hashes prepare's files.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import pyast
from .errors import GenomeError
from .record import Genome
from .repo import GenomeRepo, git_process

ENTRY = "train.py"
# What train.py may use from prepare: the run contract and the training-time API.
ALLOWED_PREPARE = frozenset(
    {
        "run_config", "RunConfig", "report", "abort_diverged", "EXIT_DIVERGED", "train_loader",
        "TrainLoader", "load_tokenizer", "Tokenizer", "get_profile", "Profile", "PROFILES", "PrepareError",
    }
)  # fmt: skip
_DATA_TOKENS = ("val.bin", ".bin", ".idx", "tokenizer.json", "manifest.json", "build.json")
_PREPARED_DIR = re.compile(r"(^|[/\\])prepared([/\\]|$)")
_MODULE_PATH = re.compile(r"^prepare(\.[A-Za-z_]\w*)*$")
_PRIVATE_ATTRS = {"data_dir": "the data directory", "result_path": "the result path", "dataset_dir": "the data directory",
                  "_RESULT_KEY": "the result key"}  # fmt: skip
_CONTRACT_FIELDS = {"depth", "budget", "budget_unit", "seed", "profile", "device", "data_dir",
                    "rank", "local_rank", "world_size"}  # fmt: skip
_OVERRIDE_CONSTANTS = {"DEPTH", "N_LAYER", "N_LAYERS", "NUM_LAYERS", "TIME_BUDGET", "SEED"}
_HIDING_CALLS = {"exec", "eval", "__import__", "globals", "vars"}
# Ways to reach objects (prepare's key and records among them) that no training script needs.
_INTROSPECTION = {"get_objects", "get_referrers", "get_referents", "_getframe", "currentframe",
                  "f_globals", "f_locals", "f_back", "getclosurevars", "cell_contents"}  # fmt: skip
_FORBIDDEN_MODULES = {"ctypes": "reaches any memory of the process (the signing key included)"}
_SEED_CALLS = {"manual_seed", "manual_seed_all", "seed"}


@dataclass(frozen=True)
class GuardResult:
    ok: bool
    reason: str = ""  # the first violation, one line ("" when ok)
    violations: tuple[str, ...] = ()

    @classmethod
    def from_violations(cls, violations: Sequence[str]) -> GuardResult:
        return cls(
            ok=not violations, reason=violations[0] if violations else "", violations=tuple(violations)
        )


def _root(node: ast.AST) -> str | None:
    """The name at the bottom of `a.b[c].d`, or None."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_literal(node: ast.AST | None) -> bool:
    """A constant, or a tuple/list/dict of constants: what a library option may be set to."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _is_literal(node.operand)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is None or _is_literal(k) for k in node.keys) and all(
            _is_literal(v) for v in node.values
        )
    return False


def _is_str(node: ast.AST | None, value: str | None = None) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (value is None or node.value == value)
    )


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str):
        self.path = path
        self.violations: list[str] = []
        self.modules: set[str] = set()  # names bound to the prepare module
        self.members: set[str] = set()  # names bound to something from prepare
        self.sys_names: set[str] = set()
        self.libs: set[str] = set()  # names bound to other imported modules or their members
        self.constants: set[str] = set()  # top-level UPPER_CASE names bound to literals
        self.cfg_names: set[str] = set()  # names bound to prepare.run_config()'s result
        self.calls_run_config = False
        self.top_level: set[ast.AST] = set()

    def flag(self, node: ast.AST, message: str) -> None:
        self.violations.append(f"{self.path} line {getattr(node, 'lineno', '?')}: {message}")

    @property
    def prepare_names(self) -> set[str]:
        return self.modules | self.members

    # -- imports -----------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            if alias.name.startswith("prepare."):
                self.flag(
                    node, f"imports {alias.name}, one of prepare's private modules; use `import prepare`"
                )
            if top == "prepare":
                self.modules.add(alias.asname or "prepare")
            else:
                self.libs.add(alias.asname or top)
            if alias.name == "sys":
                self.sys_names.add(alias.asname or "sys")
            if top in _FORBIDDEN_MODULES:
                self.flag(node, f"imports {top}, which {_FORBIDDEN_MODULES[top]}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.startswith("prepare."):
            self.flag(node, f"imports from {module}, one of prepare's private modules; use `import prepare`")
        for alias in node.names:
            if module == "prepare":
                if alias.name not in ALLOWED_PREPARE:
                    self.flag(node, f"imports prepare.{alias.name}, which train.py must not use")
                self.members.add(alias.asname or alias.name)
            elif module.split(".")[0] != "prepare":
                self.libs.add(alias.asname or alias.name)
            if module == "sys" and alias.name == "modules":
                self.flag(node, "imports sys.modules, which can swap prepare's code")
            if alias.name in _INTROSPECTION:
                self.flag(node, f"imports {alias.name}, which reaches into the interpreter (prepare's state)")
        if module.split(".")[0] in _FORBIDDEN_MODULES:
            self.flag(node, f"imports from {module}, which {_FORBIDDEN_MODULES[module.split('.')[0]]}")

    # -- binding and stores ------------------------------------------------------------------
    def _store(self, target: ast.AST, value: ast.AST | None = None) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._store(elt)
            return
        if isinstance(target, ast.Starred):
            self._store(target.value)
            return
        root = _root(target)
        if isinstance(target, ast.Name):
            if target.id in self.prepare_names:
                self.flag(
                    target, f"rebinds {target.id}, a name from prepare; the harness's code is not fair game"
                )
            return
        if root in self.prepare_names:
            self.flag(
                target,
                f"assigns to {ast.unparse(target)}: patching prepare (the metric, the contract) is not allowed",
            )
        elif root in self.sys_names and "modules" in ast.unparse(target):
            self.flag(target, "writes to sys.modules, which can swap prepare's code")
        elif root in self.libs and not (
            _is_literal(value) or (isinstance(value, ast.Name) and value.id in self.constants)
        ):
            self.flag(
                target,
                f"replaces {ast.unparse(target)}: library options may be set to constants, "
                "library code (which the metric runs on) may not be swapped",
            )
        elif root in self.cfg_names and (
            (isinstance(target, ast.Attribute) and target.attr in _CONTRACT_FIELDS)
            or "__dict__" in ast.unparse(target)
        ):
            self.flag(
                target,
                f"changes {ast.unparse(target)}; depth, budget and seed come from prepare.run_config()",
            )

    def _is_run_config_call(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        return (
            isinstance(func, ast.Attribute) and func.attr == "run_config" and _root(func) in self.modules
        ) or (isinstance(func, ast.Name) and func.id == "run_config" and func.id in self.members)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._store(target, node.value)
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if self._is_run_config_call(node.value):
            self.cfg_names.update(names)
        elif isinstance(node.value, (ast.Name, ast.Attribute)) and _root(node.value) in self.prepare_names:
            self.members.update(names)  # `p = prepare` or `ev = prepare.evaluate_bpb`: an alias
        elif isinstance(node.value, (ast.Name, ast.Attribute)) and _root(node.value) in self.libs:
            self.libs.update(names)  # `T = torch.Tensor`: patching T patches torch
        for name in names:
            if node in self.top_level and name.isupper() and _is_literal(node.value):
                self.constants.add(name)
            else:
                self.constants.discard(name)
            if node in self.top_level and name in _OVERRIDE_CONSTANTS:
                self.flag(node, f"defines {name}; depth, budget and seed come from prepare.run_config()")

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            if self._is_run_config_call(node.value) and isinstance(node.target, ast.Name):
                self.cfg_names.add(node.target.id)
        self._store(node.target, node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self._store(node.target)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._store(target)

    def visit_For(self, node: ast.For) -> None:
        self._store(node.target)
        self.generic_visit(node)

    def visit_withitem(self, node: ast.withitem) -> None:
        if node.optional_vars is not None:
            self._store(node.optional_vars)
        self.visit(node.context_expr)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._store(node.target)
        self.visit(node.value)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in self.prepare_names:
            self.flag(node, f"defines {node.name}, shadowing prepare's; the harness's code is not fair game")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.name in self.prepare_names:
            self.flag(node, f"defines {node.name}, shadowing prepare's; the harness's code is not fair game")
        self.generic_visit(node)

    # -- reads ---------------------------------------------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        root = _root(node)
        if (
            isinstance(node.value, ast.Name)
            and node.value.id in self.modules
            and node.attr not in ALLOWED_PREPARE
        ):
            self.flag(node, f"uses prepare.{node.attr}, which is private to the harness")
        elif root in self.prepare_names and node.attr.startswith("__"):
            self.flag(node, f"reaches into {ast.unparse(node)}, prepare's internals")
        if node.attr in ("__globals__", "__code__", "__closure__"):
            self.flag(node, f"uses {node.attr}, which can rewrite functions (prepare's included)")
        if node.attr == "modules" and root in self.sys_names:
            self.flag(node, "uses sys.modules, which can swap prepare's code")
        if node.attr in _PRIVATE_ATTRS:
            self.flag(node, f"reads .{node.attr} ({_PRIVATE_ATTRS[node.attr]}), which belongs to prepare")
        if node.attr in _INTROSPECTION:
            self.flag(node, f"uses {node.attr}, which reaches into the interpreter (prepare's state)")
        if node.attr == "__dict__" and root in self.cfg_names | self.prepare_names:
            self.flag(
                node,
                f"reaches into {ast.unparse(node)}; depth, budget and seed come from prepare.run_config()",
            )
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value.decode(errors="replace") if isinstance(node.value, bytes) else node.value
        if not isinstance(value, str):
            return
        if "EVOLVE" in value:
            self.flag(
                node,
                f"refers to {value!r}: read depth, budget and seed from prepare.run_config(), not the environment",
            )
        elif _MODULE_PATH.match(value):
            self.flag(
                node, f"names the module {value!r} in a string; use `import prepare` and its public names"
            )
        elif _PREPARED_DIR.search(value) or any(t in value for t in _DATA_TOKENS):
            self.flag(
                node,
                f"refers to {value!r}, prepare's data files; only prepare.make_loader('train') and prepare.evaluate_bpb read data",
            )

    def visit_Expr(self, node: ast.Expr) -> None:
        if _is_str(node.value):  # a bare string (docstring, note) reads nothing
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        first = node.args[0] if node.args else None
        if self._is_run_config_call(node):
            self.calls_run_config = True
        if isinstance(func, ast.Name) and name in _HIDING_CALLS:
            self.flag(node, f"calls {name}(), which hides code or names from this check")
        if name == "import_module":
            self.flag(node, "imports a module by name at run time; use plain imports")
        if (
            name in ("setattr", "delattr")
            and first is not None
            and _root(first) in self.libs
            and not (name == "setattr" and len(node.args) == 3 and _is_literal(node.args[2]))
        ):
            self.flag(node, f"calls {name} on {ast.unparse(first)}: library code may not be swapped")
        if (
            name in ("setattr", "delattr")
            and first is not None
            and _root(first) in self.prepare_names | self.cfg_names
        ):
            self.flag(
                node,
                f"calls {name} on {ast.unparse(first)}: patching prepare or the run config is not allowed",
            )
        if name == "getattr" and first is not None and _root(first) in self.prepare_names:
            if len(node.args) < 2 or not _is_str(node.args[1]) or node.args[1].value not in ALLOWED_PREPARE:
                self.flag(
                    node, "reads prepare's attributes with getattr; use prepare's public names directly"
                )
        if name == "__setattr__" or name == "__delattr__":
            self.flag(node, f"calls {name}, which bypasses frozen objects such as the run config")
        if name == "replace" and first is not None and _root(first) in self.cfg_names:
            self.flag(
                node,
                f"copies {ast.unparse(first)} with changes; depth, budget and seed come from prepare.run_config()",
            )
        if name == "RunConfig":
            self.flag(node, "builds its own RunConfig; take the one prepare.run_config() returns")
        if name in ("make_loader", "DataLoader"):
            split = (
                first
                if first is not None
                else next((k.value for k in node.keywords if k.arg == "split"), None)
            )
            if name == "make_loader" and not _is_str(split, "train"):
                self.flag(
                    node,
                    "make_loader must read the 'train' split; validation data is for prepare.evaluate_bpb only",
                )
            for kw in node.keywords:
                if kw.arg == "seed" and isinstance(kw.value, ast.Constant):
                    self.flag(node, "fixes the data order's seed; it comes from cfg.seed")
        if name in _SEED_CALLS and len(node.args) == 1 and isinstance(first, ast.Constant):
            self.flag(
                node, f"seeds with the constant {first.value!r}; seed from cfg.seed (prepare.run_config())"
            )
        self.generic_visit(node)


def check_source(source: str, path: str = ENTRY, entry: bool = True) -> GuardResult:
    """The code rules for one Python file; `entry` files must also call prepare.run_config()."""
    try:
        tree = pyast.parse(source, filename=path)
        pyast.compile_tree(tree, path)
    except SyntaxError as exc:
        return GuardResult.from_violations([f"{path} does not compile: line {exc.lineno}: {exc.msg}"])
    except ValueError as exc:  # e.g. null bytes
        return GuardResult.from_violations([f"{path} does not compile: {exc}"])
    checker = _Checker(path)
    checker.top_level = set(tree.body)
    checker.visit(tree)
    violations = checker.violations
    if entry and not checker.calls_run_config:
        violations.append(
            f"{path} never calls prepare.run_config(); depth, budget and seed must come from it"
        )
    return GuardResult.from_violations(violations)


def changed_paths(repo: GenomeRepo, parent: str, child: str) -> list[str]:
    proc = git_process(repo.root, "diff", "--name-only", "-z", "--no-renames", parent, child, "--")
    if proc.returncode != 0:
        raise GenomeError(f"cannot compare {parent[:10]} and {child[:10]}: {proc.stderr.decode().strip()}")
    return [p for p in proc.stdout.decode().split("\0") if p]


def check(
    repo: GenomeRepo | Path | str,
    parent_commit: Genome | str,
    child_commit: Genome | str,
    mutable: Sequence[str] = (ENTRY,),
    entry: str = ENTRY,
) -> GuardResult:
    """Every rule, for the child against its (first) parent. Never raises for a bad child."""
    if not isinstance(repo, GenomeRepo):
        repo = GenomeRepo(repo, "guard", mutable)
    parent = repo.resolve(parent_commit.commit if isinstance(parent_commit, Genome) else parent_commit)
    child = repo.resolve(child_commit.commit if isinstance(child_commit, Genome) else child_commit)
    violations: list[str] = []
    changed = changed_paths(repo, parent, child)
    outside = [p for p in changed if p not in mutable]
    if outside:
        violations.append(f"changes {', '.join(outside)}; only {', '.join(mutable)} may change")
    for path in mutable:
        listed = git_process(repo.root, "ls-tree", child, "--", path).stdout.decode().split()
        if not listed:
            if path == entry:
                violations.append(f"{path} is missing")
            continue
        if listed[0] not in ("100644", "100755"):
            violations.append(f"{path} must be a regular file, not mode {listed[0]}")
            continue
        if not path.endswith(".py"):
            continue
        data = repo.read_exact(child, path) or b""
        try:
            source = data.decode()
        except UnicodeDecodeError:
            violations.append(f"{path} is not UTF-8 text")
            continue
        violations.extend(check_source(source, path, entry=path == entry).violations)
    return GuardResult.from_violations(violations)
