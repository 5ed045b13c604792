"""A real, tiny training run: a bigram model trained for the budget, scored by prepare.evaluate_bpb."""

import time

import torch

import prepare

cfg = prepare.run_config()
torch.manual_seed(cfg.seed)
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)  # logits for the next token from the current one
opt = torch.optim.Adam(model.parameters(), lr=0.05)
loader = prepare.make_loader("train", batch_size=8)
steps, start = 0, time.time()
while time.time() - start < cfg.time_budget * 0.5:
    x, y = next(loader)
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    if not torch.isfinite(loss):
        prepare.abort_diverged(steps, loss.item())
    opt.zero_grad()
    loss.backward()
    opt.step()
    steps += 1
training_seconds = time.time() - start
val_bpb = prepare.evaluate_bpb(model)
prepare.report(cfg, val_bpb=val_bpb, training_seconds=training_seconds, num_steps=steps)
