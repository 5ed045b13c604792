"""What a run cannot do: see secrets or the validation data, outlive its run, fill the disk, change prepare or the data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from trainer_support import beating

import trainer
from trainer import Status
from trainer.env import build_env

SECRETS = {
    "OPENAI_API_KEY": "sk-test-openai",
    "HF_TOKEN": "hf_test",
    "AWS_SECRET_ACCESS_KEY": "aws-test",
    "MY_PASSWORD": "hunter2",
    "GITHUB_TOKEN": "ghp_test",
    "ANTHROPIC_BASE_URL": "https://example.invalid",
    "TORCH_HUB_AUTH_TOKEN": "allowed-prefix-but-a-token",
    "NCCL_IB_PASSWORD": "allowed-prefix-but-a-password",
}


def test_no_secret_and_no_data_reach_train_py(run_script, monkeypatch, tmp_path, tiny_data):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_UNRELATED_SETTING", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    # a cache folder that does not exist: the harness chooses the run's caches and makes them
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "no" / "such" / "inductor"))
    out = tmp_path / "out"
    dump = out / "env.json"
    private = tmp_path / "private" / "id_rsa"  # one of the user's files, outside what the run is given
    private.parent.mkdir()
    private.write_text("secret")
    look_for = [private, Path.home() / ".ssh", tiny_data / "val.bin", tiny_data / "train.bin"]

    result = run_script(
        "envdump", depth=3, seed=11, writable=[out],
        extra_env={"DUMP_PATH": str(dump), "LOOK_FOR": ":".join(map(str, look_for))},
    )  # fmt: skip

    assert result.status is Status.OK, result.reason
    seen = json.loads(dump.read_text())
    before = seen["environ"]
    text = json.dumps(seen)
    for name, value in SECRETS.items():
        assert name not in before and value not in text
    assert "SOME_UNRELATED_SETTING" not in before
    # what training needs does arrive
    assert before["OMP_NUM_THREADS"] == "1" and before["NCCL_NVLS_ENABLE"] == "0"
    assert before["PATH"] and before["PYTHONUNBUFFERED"] == "1"
    assert (before["EVOLVE_DEPTH"], before["EVOLVE_SEED"], before["EVOLVE_PROFILE"]) == ("3", "11", "tiny")
    assert before["EVOLVE_DEVICE"] == "cpu" and before["CUDA_VISIBLE_DEVICES"] == ""
    # the caches, the temp dir and the home are the run's own, inside its sandbox
    assert before["TORCHINDUCTOR_CACHE_DIR"] == "/evolve/cache/inductor" and before["TMPDIR"] == "/tmp"
    assert before["HOME"] == "/evolve/home" and seen["cwd"] == "/evolve/work"
    assert not (tmp_path / "no").exists()
    # the file system: no home, no store, no shards; the data folder holds the tokenizer and manifest
    listing = seen["listing"]
    assert "home" not in listing["/"] and listing["/evolve"] == ["cache", "data", "home", "sock", "work"]
    assert seen["found"] == {str(p): False for p in look_for}
    assert listing["/evolve/data"] == ["manifest.json", "tokenizer.json"]
    assert not any(k.startswith("EVOLVE_RESULT") for k in before)  # no key, no result file


def test_a_secret_cannot_be_smuggled_through_extra_env(run_script):
    with pytest.raises(trainer.TrainerError, match="looks like a secret"):
        run_script("envdump", extra_env={"WANDB_API_KEY": "x"})


def test_gpu_devices_become_cuda_visible_devices():
    env = build_env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "7"}, {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3"}


def test_nothing_the_run_started_outlives_it(run_script, tmp_path):
    beat = tmp_path / "beat"
    beat.mkdir()

    result = run_script("grandchild", extra_env={"BEAT_DIR": str(beat)}, writable=[beat])

    assert result.status is Status.OK, result.reason
    assert sorted(p.name for p in beat.iterdir()) == ["child", "detached"]  # both ran
    assert beating(beat) == []  # and neither, not even the one in a session of its own, runs on


def test_a_flood_of_output_is_capped_in_the_log(run_script):
    result = run_script("spam", extra_env={"SPAM_MB": "40"}, log_limit=2**20)

    log = Path(result.log_path)
    assert log.stat().st_size < 2**20 + 8192
    assert result.extra["output_bytes"] > 40 * 2**20 and result.extra["log_truncated"]
    assert "log capped" in log.read_text()
    assert "the end of the spam" in result.error_tail  # the real end is still seen
    assert result.status is Status.INVALID  # it exited 0 without handing over a model


def test_the_prepare_it_imports_is_read_only(run_script, prepare_copy):
    import prepare

    result = run_script("tamper")

    assert result.status is Status.CRASH, result.reason
    assert "Read-only file system" in result.error_tail
    assert "# a better metric" not in (prepare_copy / "metric.py").read_text()
    assert "# a better metric" not in (Path(prepare.__file__).parent / "metric.py").read_text()


def test_the_validation_data_is_not_there(run_script, tiny_data, tmp_path):
    data = tmp_path / "data-copy"
    shutil.copytree(tiny_data, data)
    stamp = (data / "val.bin").stat().st_mtime_ns

    result = run_script("tamper_data", data_dir=data)

    assert result.status is Status.CRASH
    assert "['manifest.json', 'tokenizer.json']" in result.error_tail
    assert (data / "val.bin").stat().st_mtime_ns == stamp


def test_a_prepare_inside_the_worktree_is_refused_unrun(worktree_with, tiny_data, tmp_path):
    import prepare

    tree = worktree_with("ok")
    shutil.copytree(Path(prepare.__file__).parent, tree / "prepare")

    result = trainer.run(
        tree, depth=2, budget=4096, seed=0, profile="tiny", data_dir=tiny_data, log_dir=tmp_path / "l"
    )

    assert result.status is Status.INVALID
    assert "inside its worktree" in result.reason and result.wall_seconds == 0.0


def test_without_bubblewrap_the_trainer_says_how_to_get_it(run_script, monkeypatch, tmp_path):
    from trainer import isolation

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    isolation.bwrap_version.cache_clear()
    try:
        with pytest.raises(trainer.TrainerError, match="apt-get install bubblewrap.*EVOLVE_ISOLATION=none"):
            run_script("ok")
    finally:
        isolation.bwrap_version.cache_clear()


def test_running_without_isolation_is_loud_and_recorded(run_script, monkeypatch):
    monkeypatch.setenv("EVOLVE_ISOLATION", "none")

    with pytest.warns(UserWarning, match="EVOLVE_ISOLATION=none"):
        result = run_script("ok")

    assert result.status is Status.OK, result.reason
    assert result.isolation == "none"


def test_relative_library_paths_never_bind_the_controllers_working_directory(tmp_path, monkeypatch):
    # Seen in review: LD_LIBRARY_PATH=".:/usr/lib" bound the controller's working directory (the
    # workspace, with its store and worktrees, when `evolve run` starts there) into the sandbox.
    from trainer.isolation import library_paths

    (tmp_path / "lib").mkdir()
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "lib")
    assert library_paths({"LD_LIBRARY_PATH": f".:lib::{absolute}:/no/such/dir"}) == [absolute]


def _fake_stdlib(root: Path) -> Path:
    """A standard-library folder in miniature: os.py, json (trains), idlelib and turtle (held out)."""
    (root / "idlelib" / "sub").mkdir(parents=True)
    (root / "json").mkdir()
    (root / "__pycache__").mkdir()
    for rel in ("os.py", "json/__init__.py", "idlelib/sub/editor.py", "turtle.py", "turtle.pyi"):
        (root / rel).write_text(f"text of {rel}\n")
    for rel in ("__pycache__/turtle.cpython-311.pyc", "__pycache__/json.cpython-311.pyc"):
        (root / rel).write_text(f"text of {rel}\n")
    return root


def test_the_builtin_validation_modules_are_covered_wherever_a_mount_shows_them(tmp_path):
    """Two Pythons' standard libraries, one seen through two mounts (as /usr/lib and /lib are) and
    one the run does not use: the held-out modules are empty or unreadable at every place, the rest
    reads, and a mount of a folder inside the held-out text is left out."""
    from trainer.isolation import Sandbox

    host = tmp_path / "host"
    _fake_stdlib(host / "usr" / "lib" / "python3.x")
    _fake_stdlib(host / "opt" / "py" / "lib" / "python3.y")
    (host / "lib").symlink_to(host / "usr" / "lib")
    box = Sandbox().system()
    box.ro(host / "usr", "/host/usr").ro(host / "lib", "/host/lib").ro(host / "opt", "/host/opt")
    box.ro(host / "usr" / "lib" / "python3.x" / "idlelib" / "sub", "/host/inside")
    places = ["/host/usr/lib/python3.x", "/host/lib/python3.x", "/host/opt/py/lib/python3.y"]
    script = "; ".join(
        f"ls -A {p}/idlelib; cat {p}/turtle.py {p}/turtle.pyi {p}/__pycache__/turtle.cpython-311.pyc {p}/idlelib/sub/editor.py; "
        f"cat {p}/os.py {p}/json/__init__.py {p}/__pycache__/json.cpython-311.pyc"
        for p in places
    )
    proc = subprocess.run(
        box.command(["sh", "-c", f"{script}; ls /host/inside; touch {places[0]}/idlelib/new"], cwd="/"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    seen = proc.stdout
    assert seen.count("text of os.py") == 3 and seen.count("text of json/__init__.py") == 3
    assert seen.count("text of __pycache__/json.cpython-311.pyc") == 3
    assert "turtle" not in seen and "editor" not in seen and "sub" not in seen
    assert proc.stderr.count("Permission denied") == 9  # turtle.py, its stub and its .pyc, 3 times
    assert proc.stderr.count("editor.py: No such file") == 3
    assert "/host/inside" in proc.stderr and "Read-only file system" in proc.stderr
