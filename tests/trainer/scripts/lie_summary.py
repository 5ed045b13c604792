"""Trains honestly, then prints a summary block with a much better val_bpb: a summary decides nothing."""

import torch

import prepare

cfg = prepare.run_config()
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
for _x, _y in prepare.train_loader(model, batch_size=8):
    pass  # it trains nothing: the untrained bigram is scored
prepare.report(cfg, val_bpb=0.1, training_seconds=0.001, num_steps=10**6)
print("---\nval_bpb: 0.900000", flush=True)
