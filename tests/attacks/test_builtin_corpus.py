"""The builtin source's validation text (the standard library's held-out modules) is not in
train.py's file system: an attack that looks for it everywhere finds nothing and scores exactly as
the honest baseline; without namespaces the same attack finds it (that mode has no boundary)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "badgenomes"))  # the shared lab
from attack_variants import CORPUS_ATTACKS  # noqa: E402
from genome_lab import Lab  # noqa: E402

import prepare  # noqa: E402
from prepare.sources import BUILTIN_VAL_MODULES, BUILTIN_VAL_PACKAGES, held_out_paths  # noqa: E402
from trainer import Status  # noqa: E402

HONEST, ATTACK = CORPUS_ATTACKS
MIN_COPY_BYTES = 256


def held_out_files(stdlib: Path) -> list[Path]:
    """Every file of the held-out modules of a standard-library folder."""
    files = []
    for path in held_out_paths(stdlib):
        if path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
        elif path.is_file():
            files.append(path)
    return files


@pytest.fixture(scope="module")
def held_out(tiny_data) -> str:
    """{HELD_OUT}: the names, and size -> sha256 prefixes of the files the data's validation came from."""
    stdlib = Path(prepare.load_manifest(tiny_data).source_info["stdlib"])
    sizes: dict[str, list[str]] = {}
    for path in held_out_files(stdlib):
        data = path.read_bytes()
        # a few bytes of boilerplate ("# This directory is a Python package.") other modules share
        if len(data) >= MIN_COPY_BYTES:
            sizes.setdefault(str(len(data)), []).append(hashlib.sha256(data).hexdigest()[:16])
    assert sum(map(len, sizes.values())) > 20  # the attack has something to look for
    value = {"packages": list(BUILTIN_VAL_PACKAGES), "modules": list(BUILTIN_VAL_MODULES), "sizes": sizes}
    return json.dumps(value, separators=(",", ":"))


def make_lab(root: Path, tiny_data, held: str) -> Lab:
    prepare_copy = root / "prepare-copy" / "prepare"
    shutil.copytree(Path(prepare.__file__).parent, prepare_copy, ignore=shutil.ignore_patterns("__pycache__"))
    lab = Lab(root=root, data=Path(tiny_data), prepare_copy=prepare_copy)
    lab.values = {"DATA": str(lab.data), "PREPARE": str(prepare_copy), "HELD_OUT": held}
    return lab


@pytest.fixture(scope="module")
def isolated(tiny_data, tmp_path_factory, held_out):
    lab = make_lab(tmp_path_factory.mktemp("corpus"), tiny_data, held_out)
    outcomes = lab.run_all(CORPUS_ATTACKS)
    yield outcomes
    shutil.rmtree(lab.sentinel, ignore_errors=True)


def log_of(outcome) -> str:
    return Path(outcome.result.log_path).read_text()


def test_the_search_finds_nothing_in_the_sandbox_and_changes_nothing(isolated):
    honest, attack = isolated[HONEST.name].result, isolated[ATTACK.name].result
    assert honest.status is Status.OK and honest.isolation.startswith("bubblewrap"), honest.reason
    assert attack.status is Status.OK, (attack.reason, attack.error_tail[-3000:])
    log = log_of(isolated[ATTACK.name])
    assert "ATTACK: it worked" not in log, log[-3000:]
    assert "ATTACK: refused (FileNotFoundError: no validation text among" in log, log[-3000:]
    looked = int(log.split("ATTACK: looked at ")[1].split()[0])
    assert looked > 10_000  # it walked the whole file system the sandbox shows
    assert attack.val_bpb == honest.val_bpb  # a token budget: the same code path, the same number
    assert attack.metrics["training_tokens"] == honest.metrics["training_tokens"]


def test_without_namespaces_the_same_search_finds_it(tiny_data, tmp_path, held_out, monkeypatch):
    """The positive control: EVOLVE_ISOLATION=none hides nothing (docs/SECURITY.md says so), and
    there the search finds the validation text, so the search above looked in the right places."""
    monkeypatch.setenv("EVOLVE_ISOLATION", "none")
    lab = make_lab(tmp_path / "none", tiny_data, held_out)
    try:
        with pytest.warns(UserWarning, match="EVOLVE_ISOLATION=none"):
            outcome = lab.run_all([ATTACK])[ATTACK.name]
    finally:
        shutil.rmtree(lab.sentinel, ignore_errors=True)
    assert outcome.result.isolation == "none"
    log = log_of(outcome)
    assert "ATTACK: it worked" in log, log[-3000:]
    assert "validation documents by prepare's own rule" in log
    stdlib = os.path.realpath(prepare.load_manifest(tiny_data).source_info["stdlib"])
    assert f"{stdlib}/" in log.split("ATTACK: found ")[1]
