"""`evolve prepare` through click: the tiny builtin dataset, the no-op rerun, and one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from evolve.cli import main
from prepare.shards import load_manifest


def run(*args: str):
    return CliRunner().invoke(main, ["prepare", *args])


def test_prepare_tiny_builtin_then_a_second_run_does_nothing(evolve_home):
    first = run("--profile", "tiny", "--source", "builtin")
    assert first.exit_code == 0, first.output
    data = evolve_home / "prepared" / "tiny-builtin"
    m = load_manifest(data)
    assert f"dataset:     {data}" in first.stdout
    assert f"fingerprint: {m.short_fingerprint}" in first.stdout
    assert f"train:       {m.tokens('train'):,} tokens" in first.stdout
    assert "tokenize train" in first.stderr  # the progress bars go to stderr
    mtime = (data / "train.bin").stat().st_mtime_ns

    second = run("--profile", "tiny", "--source", "builtin")
    assert second.exit_code == 0, second.output
    assert "already prepared, nothing to do" in second.stdout
    assert f"fingerprint: {m.short_fingerprint}" in second.stdout
    assert (data / "train.bin").stat().st_mtime_ns == mtime

    as_json = run("--profile", "tiny", "--json")  # builtin is tiny's default source
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["fingerprint"] == m.fingerprint and doc["path"] == str(data)


def test_unknown_profile_is_one_line_and_exit_1():
    result = run("--profile", "huge")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown profile 'huge'; choose one of: h100, h100-small, tiny"


def test_missing_local_source_is_one_line_and_exit_1(tmp_path):
    result = run("--profile", "tiny", "--source", f"local:{tmp_path / 'absent'}")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: local source") and "does not exist" in lines[0]


def test_empty_local_source_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("--profile", "tiny", "--source", f"local:{tmp_path / 'empty'}")
    assert result.exit_code == 1
    assert "has no .txt/.md/.jsonl/.parquet files" in result.stderr
    assert "Traceback" not in result.output


def test_help_explains_the_options():
    result = run("--help")
    assert result.exit_code == 0
    for word in ("--profile", "--source", "--num-shards", "local:PATH", "climbmix", "builtin"):
        assert word in result.output
