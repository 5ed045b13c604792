"""The evaluator process: started when the graph arrives, told to go once the training process is gone.

It runs `prepare.evaluate` with the trainer's own Python and prepare (never the run's PYTHONPATH),
in a sandbox of its own that holds the prepared data with its validation split, the artifact
(read-only) and the run's first device; the training process never shares a namespace, a file or
a descriptor with it. Its answer comes back through a pipe that only it holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import prepare

from .env import scrubbed
from .isolation import Sandbox, library_paths

LAUNCH = "import prepare.evaluate as e; e.main()"


def _own_prepare_root() -> str:
    return str(Path(prepare.__file__).resolve().parent.parent)


class Evaluator:
    """One evaluation. `start` as early as the graph exists; `go` when the weights are in."""

    def __init__(
        self,
        *,
        artifact: Path,
        data_dir: Path,
        seq_len: int,
        eval_tokens: int,
        device: str,  # "cpu" or a GPU index
        tmp: Path,
        log_path: Path,
        isolated: bool,
        parent_env: Mapping[str, str],
        batch_size: int | None = None,
    ):
        self.artifact, self.data_dir, self.tmp, self.log_path = artifact, data_dir, tmp, log_path
        self.seq_len, self.eval_tokens, self.device = seq_len, eval_tokens, device
        self.isolated, self.batch_size = isolated, batch_size
        self.parent_env = parent_env
        self.proc: subprocess.Popen | None = None
        self._read_fd: int | None = None
        self.started_at: float | None = None

    def _env(self) -> dict[str, str]:
        env = scrubbed(self.parent_env)
        env.pop("PYTHONPATH", None)
        root = _own_prepare_root()
        env["PYTHONPATH"] = root  # the trainer's prepare, whatever the run was given
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["HOME"] = "/tmp" if self.isolated else str(self.tmp)
        for name in ("TMPDIR", "TMP", "TEMP"):
            env[name] = "/tmp" if self.isolated else str(self.tmp)
        env["CUDA_VISIBLE_DEVICES"] = "" if self.device == "cpu" else self.device
        return env

    def start(self) -> None:
        if self.proc is not None:
            return
        read_fd, write_fd = os.pipe()
        inside = Path("/evolve")
        art = inside / "artifact" if self.isolated else self.artifact
        data = inside / "data" if self.isolated else self.data_dir
        args = [
            "--graph", str(art / "graph.bin"), "--weights", str(art / "weights.bin"), "--data", str(data),
            "--seq-len", str(self.seq_len), "--eval-tokens", str(self.eval_tokens),
            "--device", "cpu" if self.device == "cpu" else "cuda", "--result-fd", str(write_fd), "--wait",
        ]  # fmt: skip
        if self.batch_size:
            args += ["--batch-size", str(self.batch_size)]
        cmd = [sys.executable, "-c", LAUNCH, *args]
        env = self._env()
        if self.isolated:
            box = Sandbox().rw(self.tmp, "/tmp").ro(self.artifact, art).ro(self.data_dir, data).system()
            box.python(
                [
                    sys.prefix,
                    sys.base_prefix,
                    sys.exec_prefix,
                    *sys.path,
                    _own_prepare_root(),
                    *library_paths(env),
                ]
            )
            if self.device != "cpu":
                box.gpus([self.device])
            cmd = box.command(cmd, cwd="/tmp")
        self.tmp.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.tmp, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(write_fd,), start_new_session=True,
            )  # fmt: skip
        os.close(write_fd)
        self._read_fd = read_fd
        self.started_at = time.monotonic()

    def go(self, limit: float) -> dict:
        """Let it score; its answer, or a crash / timeout document when it gave none in `limit` s."""
        self.start()
        assert self.proc is not None and self._read_fd is not None
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self._kill()
            return {"status": "timeout", "reason": f"the evaluator gave no score within {limit:.0f} s"}
        return self._answer()

    def abort(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # EOF instead of "go": it stops without scoring
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def _answer(self) -> dict:
        chunks = []
        try:
            while chunk := os.read(self._read_fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(self._read_fd)
            self._read_fd = None
        raw = b"".join(chunks)
        if not raw:
            code = self.proc.returncode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return {"status": "crash", "reason": f"the evaluator ended without a score ({how}); see the log"}
        try:
            document = json.loads(raw)
        except ValueError:
            return {"status": "crash", "reason": "the evaluator's answer is not JSON"}
        return (
            document if isinstance(document, dict) else {"status": "crash", "reason": "bad evaluator answer"}
        )
