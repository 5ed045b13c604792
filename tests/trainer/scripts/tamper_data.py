"""Rewrites a file of the prepared data (here: just its timestamp) from a shell, where the in-process
sandbox cannot see it, then reports: the data hash must catch it."""

import subprocess

import torch

import prepare

cfg = prepare.run_config()
vocab = prepare.load_tokenizer().vocab_size
val_bpb = prepare.evaluate_bpb(torch.nn.Embedding(vocab, vocab))
subprocess.run(["touch", "-d", "@0", str(cfg.data_dir / "val.bin")], check=True)
prepare.report(cfg, val_bpb=val_bpb, training_seconds=0.0)  # it trained nothing
