"""The baseline genome: generation 0 of every evolution."""

from __future__ import annotations

from pathlib import Path

BASELINE = Path(__file__).with_name("train.py")

__all__ = ["BASELINE"]
