"""The live view: its snapshots, which read the whole run, never take more than a twentieth of the controller's time."""

from __future__ import annotations

import io
import time

from rich.console import Console

from evolve.live import SNAPSHOT_SHARE, LiveView


def test_a_slow_snapshot_is_taken_less_often_than_the_refresh_asks():
    calls: list[float] = []

    def source():
        calls.append(time.time())
        time.sleep(0.05)  # a long run's snapshot
        raise LookupError("no run row yet")  # the view then draws nothing

    view = LiveView(source, Console(file=io.StringIO()), interval=0.0, refresh=0.0)
    end = time.time() + 1.5
    while time.time() < end:
        view.tick()
        time.sleep(0.01)
    # 1.5 s at most 1/20 busy with 0.05 s snapshots: two of them, where refresh=0 would take ~25
    assert 1 <= len(calls) <= 1 + 1.5 / (SNAPSHOT_SHARE * 0.05)
    assert all(b - a >= SNAPSHOT_SHARE * 0.05 for a, b in zip(calls, calls[1:], strict=False))
