"""`evolve report`: the HTML and Markdown files, their tables and diffs, and the plots loading in Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "bench" / "check_report.sh"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def evolve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from autoevolve.cli import main; main()", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def html_report(built) -> Path:
    proc = evolve("report", cwd=built.root)
    assert proc.returncode == 0, proc.stderr
    out = built.root / ".evolve" / "report" / "r1.html"
    assert proc.stdout.strip() == f"wrote {out}"
    return out


def test_html_report_is_self_contained_with_three_plots(html_report):
    text = html_report.read_text()
    images = re.findall(r'<img id="plot-(\w+)" alt="\w+" src="data:image/png;base64,([^"]+)"', text)
    assert [name for name, _ in images] == ["progress", "lineage_tree", "transfer"]
    for _, data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in text and "https://" not in text  # nothing to fetch


def test_html_report_has_leaderboard_operators_and_the_champions_steps_with_diffs(html_report, built):
    text = html_report.read_text()
    ids = built.ids
    board = text.split('class="leaderboard"')[1].split("</table>")[0]
    order = [m for m in re.findall(r"<td>(g\d{4})</td>", board)]
    assert order == [ids["warm"], ids["merge"], ids["lr"], ids["base"], ids["cap"]]
    ops = text.split('class="operators"')[1].split("</table>")[0]
    assert "<td>optuna</td>" in ops and "<td>100%</td>" in ops and "<td>merge_crossover</td>" in ops
    assert f"Champion <b>{ids['warm']}</b>" in text
    steps = text.split("line of descent")[1]
    assert [s for s in re.findall(r"<h3>(g\d{4}) ·", steps)] == [ids["base"], ids["lr"], ids["warm"]]
    # Each step shows its own diff of train.py against its first parent.
    assert '<span class="del">-MATRIX_LR = 0.04' in steps and '<span class="add">+MATRIX_LR = 0.05' in steps
    assert '<span class="add">+WARMDOWN_FRAC = 0.6' in steps
    assert steps.count("diff --git a/train.py b/train.py") == 2


def test_markdown_report_writes_pngs_beside_it(built, tmp_path):
    out = tmp_path / "out" / "run.md"
    proc = evolve("report", str(built.root), "--format", "md", "--out", str(out), "--top", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    links = re.findall(r"!\[(\w+)\]\(([^)]+)\)", text)
    assert [name for name, _ in links] == ["progress", "lineage_tree", "transfer"]
    for _, link in links:
        assert (out.parent / link).read_bytes().startswith(b"\x89PNG")
    board = text.split("## Leaderboard")[1].split("##")[0]
    assert board.count(f"| {built.ids['warm']} |") == 1 and len(re.findall(r"^\| \d \|", board, re.M)) == 2
    assert "```diff" in text and "+WARMDOWN_FRAC = 0.6" in text


def test_report_errors_are_one_line(tmp_path):
    proc = evolve("report", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium); "
                    "run bench/check_report.sh REPORT.html where it is")  # fmt: skip
def test_plots_load_in_headless_chromium(html_report, tmp_path):
    ok = subprocess.run(["bash", str(CHECK), str(html_report)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("loaded,") == 3 and "ok: all 3 images loaded" in ok.stdout
    # The check can fail: a corrupted image is caught.
    broken = tmp_path / "broken.html"
    broken.write_text(html_report.read_text().replace("base64,iVBOR", "base64,AAAA", 1))
    bad = subprocess.run(["bash", str(CHECK), str(broken)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "image 1: NOT loaded" in bad.stdout
