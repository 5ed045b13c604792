"""Quietly trains a deeper model than asked (depth + 1) and reports that depth."""

import dataclasses

import torch

import prepare

cfg = prepare.run_config()
cfg = dataclasses.replace(cfg, depth=cfg.depth + 1)
vocab = prepare.load_tokenizer().vocab_size
val_bpb = prepare.evaluate_bpb(torch.nn.Embedding(vocab, vocab))  # a real score of an untrained bigram
prepare.report(cfg, val_bpb=val_bpb, training_seconds=0.0)  # it trained nothing
