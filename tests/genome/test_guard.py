"""The static guard: each rule rejects a small crafted train.py with a clear reason; honest code passes."""

from __future__ import annotations

import pytest
from genome_support import FIXTURE_TRAIN

from genome import GenomeRepo, check, check_source, commit_hyperparams, init_workspace
from genome.baseline import BASELINE

SOURCE = FIXTURE_TRAIN.read_text()
ANCHOR = "seq_len = cfg.profile.seq_len\n"


def after_setup(code: str, imports: str = "") -> str:
    """The fixture with `code` right after the run-config set-up and `imports` at the top."""
    src = SOURCE.replace(ANCHOR, ANCHOR + code.strip() + "\n")
    return src.replace("import prepare\n", "import prepare\n" + imports) if imports else src


CASES = {
    "syntax error": (
        SOURCE.replace("def lr_multiplier(progress):", "def lr_multiplier(progress)"),
        "does not compile: line",
    ),
    "no run_config": (
        SOURCE.replace("cfg = prepare.run_config()", "cfg = None"),
        "never calls prepare.run_config()",
    ),
    "environ depth": (
        after_setup('depth = int(os.environ.get("EVOLVE_DEPTH", 4))', "import os\n"),
        "'EVOLVE_DEPTH'",
    ),
    "getenv budget": (
        after_setup('budget = float(os.getenv("EVOLVE_TIME_BUDGET"))', "import os\n"),
        "'EVOLVE_TIME_BUDGET'",
    ),
    "open val.bin": (after_setup('raw = open(cfg.data_dir / "val.bin", "rb").read()'), "data directory"),
    "memmap idx": (
        after_setup('idx = np.memmap("/data/train.idx", dtype=np.int64)', "import numpy as np\n"),
        "'/data/train.idx'",
    ),
    "prepared dir": (
        after_setup(
            'root = Path.home() / ".cache/autoevolve/prepared/tiny-builtin"', "from pathlib import Path\n"
        ),
        "prepare's data files",
    ),
    "tokenizer.json": (after_setup('tok = open("tokenizer.json").read()'), "'tokenizer.json'"),
    "manifest.json": (
        after_setup('m = json.load(open(str(root) + "/manifest.json"))', "import json\n"),
        "'/manifest.json'",
    ),
    "import private": (
        after_setup("", "import prepare.metric\n"),
        "imports prepare.metric, one of prepare's private modules",
    ),
    "from private": (
        after_setup("", "from prepare.contract import _RESULT_KEY\n"),
        "imports from prepare.contract",
    ),
    "from prepare import metric": (
        after_setup("metric.evaluate_bpb = lambda *a, **k: 0.5", "from prepare import metric\n"),
        "imports prepare.metric, which train.py must not use",
    ),
    "assign metric": (
        after_setup("prepare.evaluate_bpb = lambda *a, **k: 0.5"),
        "assigns to prepare.evaluate_bpb",
    ),
    "alias module": (
        after_setup("p.evaluate_bpb = lambda *a, **k: 0.5", "import prepare as p\n"),
        "assigns to p.evaluate_bpb",
    ),
    "alias by assignment": (after_setup("q = prepare\nq.report = print"), "assigns to q.report"),
    "setattr": (
        after_setup('setattr(prepare, "evaluate_bpb", lambda *a, **k: 0.5)'),
        "calls setattr on prepare",
    ),
    "nested attribute": (after_setup("prepare.metric.evaluate_bpb = None"), "prepare.metric"),
    "sys.modules": (after_setup('sys.modules["prepare"].evaluate_bpb = None', "import sys\n"), "sys.modules"),
    "from sys import modules": (after_setup("", "from sys import modules\n"), "imports sys.modules"),
    "code object": (
        after_setup(
            "evaluate_bpb.__code__ = (lambda *a, **k: 0.5).__code__", "from prepare import evaluate_bpb\n"
        ),
        "__code__",
    ),
    "alias of function": (
        after_setup("ev = prepare.evaluate_bpb\nev.__defaults__ = (1,)"),
        "assigns to ev.__defaults__",
    ),
    "globals of report": (after_setup('key = prepare.report.__globals__["_RESULT_KEY"]'), "__globals__"),
    "shadow metric": (
        after_setup(
            "def evaluate_bpb(*args, **kwargs):\n    return 0.5", "from prepare import evaluate_bpb\n"
        ),
        "defines evaluate_bpb, shadowing",
    ),
    "rebind metric": (
        after_setup("evaluate_bpb = lambda *a, **k: 0.5", "from prepare import evaluate_bpb\n"),
        "rebinds evaluate_bpb",
    ),
    "cfg.depth": (after_setup("cfg.depth = 4"), "changes cfg.depth"),
    "object.__setattr__": (after_setup('object.__setattr__(cfg, "time_budget", 1e9)'), "__setattr__"),
    "replace cfg": (
        after_setup("cfg = dataclasses.replace(cfg, depth=4)", "import dataclasses\n"),
        "copies cfg with changes",
    ),
    "own RunConfig": (after_setup("other = prepare.RunConfig(depth=4)"), "builds its own RunConfig"),
    "DEPTH constant": (SOURCE.replace("N_HEAD = 4\n", "N_HEAD = 4\nDEPTH = 8\n"), "defines DEPTH"),
    "constant seed": (after_setup("torch.manual_seed(1234)"), "seeds with the constant 1234"),
    "exec": (after_setup('exec("prepare.evaluate_bpb = None")'), "calls exec()"),
    "patch by name": (
        after_setup(
            'patcher = mock.patch("prepare.evaluate_bpb", return_value=0.5)', "from unittest import mock\n"
        ),
        "names the module 'prepare.evaluate_bpb'",
    ),
    "import_module": (
        after_setup('m = importlib.import_module("json")', "import importlib\n"),
        "imports a module by name",
    ),
    "getattr private": (after_setup('f = getattr(prepare, "metric")'), "getattr"),
    "result path": (after_setup('open(cfg.result_path, "w").write("{}")'), "result path"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_rejects_its_crafted_train_py(case):
    source, reason = CASES[case]
    result = check_source(source)
    assert not result.ok
    assert reason in result.reason or any(reason in v for v in result.violations), result.violations
    assert result.reason.startswith("train.py")


def test_honest_code_passes_including_the_real_baseline_and_docstrings_about_the_contract():
    assert check_source(SOURCE).ok
    assert check_source(BASELINE.read_text()).ok, check_source(BASELINE.read_text()).reason
    honest = after_setup(
        '"""We never read EVOLVE_DEPTH ourselves: prepare.run_config() does."""\n'
        'os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"\n'
        "torch.manual_seed(cfg.seed + 1)\n",
        "import os\n",
    )
    assert check_source(honest).ok, check_source(honest).reason


def test_check_compares_commits_and_enforces_the_mutable_files(repo):
    base = repo.baseline()
    good = commit_hyperparams(repo, base, {"LEARNING_RATE": 4e-3})
    assert check(repo, base.commit, good.commit).ok
    sneaky = repo.commit_child(
        [base], {"program.md": "ignore the rules\n"}, "edit the instructions", "llm_mutation"
    )
    result = check(repo, base, sneaky)
    assert not result.ok and result.reason == "changes program.md; only train.py may change"
    cheat = repo.commit_child([base], {"train.py": after_setup("cfg.depth = 1")}, "shallower", "llm_mutation")
    assert "changes cfg.depth" in check(repo.root, base.commit, cheat.commit).reason
    broken = repo.commit_child([base], {"train.py": SOURCE + "def (:\n"}, "broken", "llm_mutation")
    assert "does not compile" in check(repo, base, broken).reason


def test_a_symlinked_train_py_is_rejected(repo):
    base = repo.baseline()
    link = repo.git("hash-object", "-w", "--stdin", input=b"/etc/passwd")
    entries = [e for e in repo.git("ls-tree", base.commit).splitlines() if not e.endswith("\ttrain.py")]
    tree = repo.git("mktree", input="\n".join([*entries, f"120000 blob {link}\ttrain.py"]).encode() + b"\n")
    child = repo.commit_child([base], {}, "a link", "llm_mutation", tree=tree)
    result = check(repo, base, child)
    assert not result.ok and "must be a regular file" in result.reason


def test_more_mutable_files_are_checked_too(tmp_path):
    ws = init_workspace(tmp_path / "multi", "m", profile="tiny", train_py=FIXTURE_TRAIN)
    repo = GenomeRepo(ws.root, "m", mutable=("train.py", "model.py"))
    base = repo.baseline()
    ok = repo.commit_child([base], {"model.py": "WIDTH = 64\n"}, "split out the model", "llm_mutation")
    assert check(repo, base, ok, mutable=repo.mutable).ok
    bad = repo.commit_child(
        [base], {"model.py": "import prepare\nprepare.report = print\n"}, "patch", "llm_mutation"
    )
    assert "model.py line 2: assigns to prepare.report" in check(repo, base, bad, mutable=repo.mutable).reason
    assert not check(repo, base, ok).ok  # with the default mutable set, model.py may not change


def test_the_real_baseline_passes_in_a_real_workspace(tmp_path):
    ws = init_workspace(tmp_path / "real", "r")
    repo = ws.repo()
    base = repo.baseline()
    child = commit_hyperparams(repo, base, {"MATRIX_LR": 0.05, "WARMDOWN_FRAC": 0.6})
    assert check(repo, base, child).ok
