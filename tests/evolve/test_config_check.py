"""evolve.toml: unknown tables, operators and keys are errors with a "did you mean"; wrong types are errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from evolve.cli import main
from evolve.engine import EngineConfig
from evolve.errors import EvolveError
from evolve.validate import ValidationSpec
from genome.errors import GenomeError
from genome.settings import SETTINGS_FILE
from genome.workspace import init_workspace, open_workspace


@pytest.fixture
def ws(tmp_path):
    return init_workspace(tmp_path / "ws", run="r", profile="tiny", budget=81920)


def _with(ws, text: str):
    with open(ws.root / SETTINGS_FILE, "a") as f:
        f.write(text)
    return open_workspace(ws.root)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\n[serch]\nmax_seeds = 2\n", "unknown table [serch]; did you mean [search]?"),
        (
            "\n[operators.optuna_tweek]\nmax_changes = 1\n",
            "unknown operator [operators.optuna_tweek]; did you mean [operators.optuna_tweak]?",
        ),
        ("\n[search]\nmax_seed = 2\n", "unknown key 'max_seed' in [search]; did you mean max_seeds?"),
        (
            "\n[operators.optuna_tweak]\nmax_change = 1\n",
            "unknown key 'max_change' in [operators.optuna_tweak]; did you mean max_changes?",
        ),
        (
            "\n[store]\nbackups_keep = 3\n",
            "unknown key 'backups_keep' in [store]; did you mean backups_kept?",
        ),
        ("\n[search]\nmax_seeds = 2.5\n", "[search] max_seeds must be a whole number, not 2.5"),
        ("\n[search]\nbaseline_seeds = true\n", "[search] baseline_seeds must be a whole number, not True"),
        ('\n[search]\nalpha = "2"\n', "[search] alpha must be a number, not '2'"),
        ("\n[search]\noperators = [1, 2]\n", "[search] operators must be a list of strings"),
        ("\n[search]\nallowance = false\n", "[search] allowance must be number or none, not False"),
        ("\n[store]\nbackup_minutes = 0\n", "[store] backup_minutes must be > 0"),
        ("\nmax_seeds = 2\n", "unknown key 'max_seeds' in [llm]"),  # lands in the last table: [llm]
    ],
)
def test_typos_and_wrong_types_in_evolve_toml_are_errors(ws, text, message):
    with pytest.raises(EvolveError) as info:
        EngineConfig.from_workspace(_with(ws, text))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("depth = 2.5", "[run] depth must be a whole number, not 2.5"),
        (
            "budget = true",
            "[run] budget must be a number (seconds or tokens, as the profile counts), not True",
        ),
        ("islands = true", "[run] islands must be a whole number, not True"),
        ('depth = "12"', "[run] depth must be a whole number, not '12'"),
        ("dpeth = 3", "unknown key 'dpeth' in [run]; did you mean depth?"),
    ],
)
def test_the_run_table_refuses_wrong_types_instead_of_rounding_them(ws, line, message):
    text = (ws.root / SETTINGS_FILE).read_text()
    (ws.root / SETTINGS_FILE).write_text(_replace_key(text, line))
    with pytest.raises(GenomeError) as info:
        open_workspace(ws.root)
    assert message in str(info.value)


def _replace_key(text: str, line: str) -> str:
    """evolve.toml's text with [run]'s `key = ...` line replaced by `line` (or added)."""
    key = line.split(" =")[0]
    lines = text.splitlines()
    for i, old in enumerate(lines):
        if old.startswith(f"{key} ="):
            lines[i] = line
            return "\n".join(lines) + "\n"
    return text.replace("[run]\n", f"[run]\n{line}\n", 1)


def test_valid_settings_still_load_and_validate_checks_its_table_too(ws):
    good = _with(ws, '\n[search]\nmax_seeds = 2\nalpha = 0.1\noperators = "optuna_tweak"\n\n[store]\nbackup_minutes = 5\n'
                 "\n[operators.optuna_tweak]\nmax_changes = 1\nweight = 2\n")  # fmt: skip
    config = EngineConfig.from_workspace(good)
    assert (config.max_seeds, config.alpha, config.operators, config.backup_minutes) == (
        2,
        0.1,
        ("optuna_tweak",),
        5,
    )
    assert ValidationSpec.from_workspace(_with(ws, "\n[validate]\ntop = 2\n")).top == 2
    with pytest.raises(EvolveError, match="unknown key 'seed' in \\[validate\\]; did you mean seeds?"):
        ValidationSpec.from_workspace(_with(ws, "seed = 3\n"))


def test_the_cli_says_it_in_one_line(ws):
    _with(ws, "\n[serch]\nmax_seeds = 2\n")
    result = CliRunner().invoke(main, ["run", "-w", str(ws.root), "--gpus", "cpu"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "did you mean [search]?" in result.output
