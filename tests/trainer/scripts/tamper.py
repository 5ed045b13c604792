"""Edits a file of the prepare package it imports (the metric) from a shell, where the in-process
sandbox cannot see it, then reports as if all were fine: the package hash must catch it."""

import subprocess
from pathlib import Path

import torch

import prepare

cfg = prepare.run_config()
metric = Path(prepare.__file__).parent / "metric.py"
subprocess.run(["sh", "-c", 'echo "# a better metric" >> "$1"', "sh", str(metric)], check=True)
vocab = prepare.load_tokenizer().vocab_size
val_bpb = prepare.evaluate_bpb(torch.nn.Embedding(vocab, vocab))
prepare.report(cfg, val_bpb=val_bpb, training_seconds=0.0)  # it trained nothing
