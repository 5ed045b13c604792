"""Purpose-built bad train.py variants: each an edit of the real baseline, with the verdict it must get.

Placeholders filled in by the lab: {MARK} (seconds to sleep, unique to the variant, so that its
sleeping children can be found by command line), {USERS} (a folder of the user's files),
{GITDIR} (the workspace's .git), {STORE} (its .evolve), {OTHER} (another variant's worktree),
{DATA} (the prepared data), {PREPARE} (the prepare package the run imports). Mistakes that need
no model go first in the file (EARLY), so that they fail before the heavy imports.
"""

from __future__ import annotations

import os

from genome_lab import (
    EARLY,
    FORWARD,
    IMPORTS,
    LOOP,
    SETUP,
    STEP_END,
    Lab,
    Outcome,
    Variant,
    after,
    alive_with,
    before,
    replace,
)

from trainer import Status

# A second of window after 4 s of start-up, then a second of exit grace: SIGTERM at 6 s (SIGKILL 5 s later)
HANG = dict(budget=1.0, budget_unit="seconds", allowance=4.0, window_limit=1.0, exit_grace=1.0)


def no_survivors(outcome: Outcome, lab: Lab) -> None:
    """Nothing the run started is still alive (its children carry the variant's name)."""
    assert not alive_with(outcome.mark), "processes outlived the run"


def asleep(outcome: Outcome, lab: Lab) -> None:
    """It was killed where it meant to hang, not while still importing."""
    assert "sleeping" in outcome.result.error_tail


def log_capped(outcome: Outcome, lab: Lab) -> None:
    result = outcome.result
    assert result.extra["output_bytes"] > 2**30 and result.extra["log_truncated"]
    assert os.path.getsize(result.log_path) < 60 * 2**20  # the default cap is 50 MB


def data_intact(outcome: Outcome, lab: Lab) -> None:
    """The shell met a read-only mount (or no data at all): the copy of the data is still whole."""
    assert (lab.root / f"data-{outcome.variant.name}" / "train.bin").exists()
    assert "Read-only file system" in open(outcome.result.log_path).read()


def nothing_left(outcome: Outcome, lab: Lab) -> None:
    """What it wrote went with its run: the worktree holds none of it, the log folder no run folder."""
    assert not list(outcome.worktree.glob("scratch-*.txt"))
    assert not list((lab.logs / outcome.variant.name).glob("run-*"))


def worktree_intact(outcome: Outcome, lab: Lab) -> None:
    assert (outcome.worktree / ".git").is_file()  # the run had a copy without it


def step_one(code: str) -> str:
    return f"if step == 1:\n    {code}"


VARIANTS: tuple[Variant, ...] = (
    # ---- it does not even start --------------------------------------------------------------
    Variant(
        "syntax_error",
        "a colon lost in an edit",
        (
            replace(
                "def lr_multiplier(progress: float) -> float:", "def lr_multiplier(progress: float) -> float"
            ),
        ),
        Status.CRASH,
        "SyntaxError",
        guard="does not compile",
    ),
    Variant(
        "import_error",
        "imports a package that is not installed",
        (after(IMPORTS, "import flash_attn_9000  # noqa: F401"),),
        Status.CRASH,
        "ModuleNotFoundError",
    ),
    Variant(
        "keyboard_interrupt",
        "raises KeyboardInterrupt while setting up",
        (after(EARLY, "raise KeyboardInterrupt"),),
        Status.CRASH,
        "KeyboardInterrupt",
    ),
    # ---- it fails while training or evaluating ----------------------------------------------
    Variant(
        "name_error_mid_training",
        "uses a name it never defined, at step 1",
        (after(STEP_END, step_one("loss_value *= learning_rate_scale")),),
        Status.CRASH,
        "NameError: name 'learning_rate_scale'",
    ),
    Variant(
        "attribute_error_in_model",
        "the model reads an attribute it never set",
        (after(FORWARD, "self.missing_buffer.zero_()"),),
        Status.CRASH,
        "AttributeError",
    ),
    Variant(
        "wrong_shapes_in_training",
        "feeds targets one token short",
        (replace("loss = train_model(x, y)", "loss = train_model(x, y[:, :-1])"),),
        Status.CRASH,
        "Error",
    ),
    Variant(
        "wrong_logits_shape_in_eval",
        "hands the metric flattened logits",
        (replace("            return logits\n", "            return logits.flatten(0, 1)\n"),),
        Status.CRASH,
        "model(x) must return logits of shape",
    ),
    Variant(
        "exception_in_evaluation",
        "its forward breaks in eval mode",
        (after(FORWARD, 'if not self.training:\n    raise RuntimeError("the eval path was never tested")'),),
        Status.CRASH,
        "RuntimeError: the eval path was never tested",
    ),
    Variant(
        "recursion",
        "a helper that calls itself forever",
        (after(EARLY, "def deeper(n):\n    return deeper(n + 1)\ndeeper(0)"),),
        Status.CRASH,
        "RecursionError",
    ),
    Variant(
        "exit_code_3",
        "gives up with sys.exit(3)",
        (after(EARLY, "import sys\nsys.exit(3)"),),
        Status.CRASH,
        "exit code 3",
    ),
    Variant(
        "segfault",
        "dies of a segmentation fault",
        (after(STEP_END, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"),),
        Status.CRASH,
        "killed by signal 11",
    ),
    Variant(
        "sigkill_self",
        "SIGKILLs itself (which must not pass for the OOM killer)",
        (after(STEP_END, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),),
        Status.CRASH,
        "killed itself with SIGKILL",
    ),
    Variant(
        "close_stdout",
        "closes its stdout and stderr, then logs",
        (after(SETUP, "import os\nos.close(1)\nos.close(2)"),),
        Status.CRASH,
        "exit code",
    ),
    # ---- memory -------------------------------------------------------------------------------
    Variant(
        "host_oom",
        "asks for a petabyte of host memory",
        (after(EARLY, "hoard = bytearray(10**15)"),),
        Status.OOM,
        "out of memory",
    ),
    Variant(
        "torch_oom",
        "asks torch for a petabyte tensor",
        (after(SETUP, "spare = torch.empty(10**15, dtype=torch.uint8)"),),
        Status.OOM,
        "out of memory",
    ),
    Variant(
        "memory_growth",
        "keeps doubling a buffer it never frees, until the allocator says no",
        (
            after(
                EARLY,
                "import numpy as np\nleak = []\nfor k in range(20, 62):\n    leak.append(np.zeros(2**k, dtype=np.uint8))",
            ),
        ),
        Status.OOM,
        "out of memory",
    ),
    # ---- numbers ------------------------------------------------------------------------------
    Variant(
        "nan_loss",
        "a rotary base of zero: inf frequencies, NaN loss",
        (replace("ROPE_BASE = 10000.0", "ROPE_BASE = 0.0"),),
        Status.DIVERGED,
        "NaN",
    ),
    Variant(
        "loss_explosion",
        "no logit cap and a huge head init: the loss explodes at once",
        (
            replace("LOGIT_SOFTCAP = 15.0", "LOGIT_SOFTCAP = 1e9"),
            replace("self.lm_head.weight.normal_(0.0, 0.001)", "self.lm_head.weight.normal_(0.0, 1e4)"),
        ),
        Status.DIVERGED,
        "exploding loss",
    ),
    # ---- time ---------------------------------------------------------------------------------
    Variant(
        "infinite_loop_before_training",
        "spins forever before the first step",
        (after(EARLY, "while True:\n    pass"),),
        Status.TIMEOUT,
        "killed",
        **HANG,
    ),
    Variant(
        "sleep_past_budget",
        "sleeps an hour once set up",
        (after(SETUP, 'import time\nprint("sleeping", flush=True)\ntime.sleep(3600)'),),
        Status.TIMEOUT,
        "killed",
        check=asleep,
        **{**HANG, "allowance": 20.0},  # room to import torch on a loaded machine
    ),
    Variant(
        "ignores_sigterm",
        "ignores SIGTERM and hangs: only the SIGKILL after the grace ends it",
        (
            after(
                EARLY, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)"
            ),
        ),
        Status.TIMEOUT,
        "killed",
        **HANG,
    ),
    Variant(
        "own_process_group_and_hang",
        "starts a child in a process group of its own, then hangs",
        (
            after(
                SETUP,
                'import subprocess, time\nsubprocess.Popen(["sleep", "{MARK}"], process_group=0)\ntime.sleep(3600)',
            ),
        ),
        Status.TIMEOUT,
        "killed",
        check=no_survivors,
        **HANG,
    ),
    Variant(
        "ddp_barrier_hang",
        "under torchrun, rank 1 never reaches DDP's first collective, so rank 0 waits forever",
        (before("train_model = DDP(", "import time\nif cfg.rank == 1:\n    time.sleep(3600)"),),
        Status.TIMEOUT,
        "killed",
        devices=2,
        **{**HANG, "allowance": 8.0},
    ),
    # ---- processes ----------------------------------------------------------------------------
    Variant(
        "fork_bomb",
        "starts 50 sleeping processes (a bounded fork bomb) and trains on",
        (
            after(
                SETUP, 'import subprocess\nbomb = [subprocess.Popen(["sleep", "{MARK}"]) for _ in range(50)]'
            ),
        ),
        Status.OK,
        check=no_survivors,
    ),
    Variant(
        "forked_children",
        "forks 10 copies of itself that sleep, and trains on",
        (
            after(
                SETUP,
                'import os\nfor _ in range(10):\n    if os.fork() == 0:\n        os.execvp("sleep", ["sleep", "{MARK}"])',
            ),
        ),
        Status.OK,
        check=no_survivors,
    ),
    Variant(
        "daemon_left_behind",
        "leaves a double-forked daemon in a session of its own, meant to strike later",
        (
            after(
                SETUP,
                'import subprocess\nsubprocess.Popen(["setsid", "sh", "-c", "sleep {MARK}; echo late > {USERS}/late.txt"])',
            ),
        ),
        Status.OK,
        check=no_survivors,
    ),
    Variant(
        "escapes_session_and_env",
        "starts a process in a new session with an empty environment (no run tag)",
        (
            after(
                SETUP,
                'import subprocess\nsubprocess.Popen(["sleep", "{MARK}"], start_new_session=True, env={})',
            ),
        ),
        Status.OK,
        check=no_survivors,
    ),
    Variant(
        "exit_zero_before_training",
        "os._exit(0) right before the training loop: nothing trained, nothing handed over",
        (before(LOOP, "import os\nos._exit(0)"),),
        Status.INVALID,
        "no model was handed over",
    ),
    # ---- files --------------------------------------------------------------------------------
    Variant(
        "writes_outside_worktree",
        "writes a file into the user's folder",
        (after(EARLY, 'open("{USERS}/pwned.txt", "w").write("hello")'),),
        Status.INVALID,
        "sandbox: train.py tried to write",
    ),
    Variant(
        "deletes_users_file",
        "deletes a file of the user's",
        (after(EARLY, 'import os\nos.remove("{USERS}/keep.txt")'),),
        Status.INVALID,
        "sandbox: train.py tried to write",
    ),
    Variant(
        "symlink_escape",
        "writes through a symlink from its worktree to the user's folder",
        (
            after(
                EARLY, 'import os\nos.symlink("{USERS}", "escape")\nopen("escape/pwned.txt", "w").write("hi")'
            ),
        ),
        Status.INVALID,
        "sandbox: train.py tried to write",
    ),
    Variant(
        "deletes_git",
        "deletes the workspace's .git",
        (after(EARLY, 'import shutil\nshutil.rmtree("{GITDIR}")'),),
        Status.INVALID,
        "sandbox",
    ),
    Variant(
        "deletes_worktree_git_link",
        "deletes its worktree's .git file (the run works on a copy that has none)",
        (after(EARLY, 'import os\nos.remove(".git")'),),
        Status.CRASH,
        "FileNotFoundError",
        check=worktree_intact,
    ),
    Variant(
        "reads_another_worktree",
        "copies another individual's train.py",
        (after(EARLY, 'stolen = open("{OTHER}/train.py").read()'),),
        Status.INVALID,
        "sandbox: train.py tried to read",
    ),
    Variant(
        "lists_the_store",
        "looks around the workspace's store",
        (after(EARLY, 'import os\nprint(os.listdir("{STORE}"))'),),
        Status.INVALID,
        "sandbox: train.py tried to read",
    ),
    Variant(
        "deletes_the_data",
        "deletes the prepared data",
        (after(EARLY, 'import shutil\nshutil.rmtree("{DATA}")'),),
        Status.INVALID,
        "sandbox",
        guard="prepare's data files",
    ),
    Variant(
        "deletes_the_data_from_a_shell",
        "deletes the data from a shell, which the tripwire cannot see: the mount is read-only",
        (after(SETUP, 'import subprocess\nsubprocess.run(["sh", "-c", "rm -rf \\"$EVOLVE_DATA\\""])'),),
        Status.OK,
        guard="EVOLVE_DATA",
        own_data=True,
        check=data_intact,
    ),
    Variant(
        "chmods_prepare",
        "makes prepare's metric world-writable",
        (after(EARLY, 'import os\nos.chmod("{PREPARE}/metric.py", 0o777)'),),
        Status.INVALID,
        "sandbox: train.py tried to write",
    ),
    # ---- harmless oddities: judged on their merits --------------------------------------------
    Variant(
        "changes_cwd",
        "moves to / before training",
        (after(SETUP, 'import os\nos.chdir("/")'),),
        Status.OK,
    ),
    Variant(
        "litters_its_worktree",
        "writes 200 scratch files into its own worktree and the temp dir",
        (
            after(
                SETUP,
                'import tempfile\nfor i in range(200):\n    open(f"scratch-{i}.txt", "w").write("x")\ntempfile.NamedTemporaryFile(delete=False).write(b"x")',
            ),
        ),
        Status.OK,
        check=nothing_left,
    ),
    Variant(
        "gigabytes_of_stdout",
        "prints a gibibyte of progress bars, then trains and reports",
        (
            after(
                SETUP,
                'import sys\nline = b"#" * 1023 + b"\\n"\nfor _ in range(1024):\n    sys.stdout.buffer.write(line * 1024)\nsys.stdout.flush()',
            ),
        ),
        Status.OK,
        check=log_capped,
    ),
)
