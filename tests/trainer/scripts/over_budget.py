"""Reports twice the budget of training time (it trained longer than it was allowed to)."""

import torch

import prepare

cfg = prepare.run_config()
vocab = prepare.load_tokenizer().vocab_size
val_bpb = prepare.evaluate_bpb(torch.nn.Embedding(vocab, vocab))  # a real score of an untrained bigram
prepare.report(cfg, val_bpb=val_bpb, training_seconds=cfg.time_budget * 2)
