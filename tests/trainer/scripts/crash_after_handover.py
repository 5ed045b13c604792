"""Trains like ok.py, then fails after the loop: the model was handed over, so it is what is judged."""

import torch

import prepare

cfg = prepare.run_config()
torch.manual_seed(cfg.seed)
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)  # logits for the next token from the current one
opt = torch.optim.Adam(model.parameters(), lr=0.05)
loader = prepare.train_loader(model, batch_size=8)
for x, y in loader:
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    if not torch.isfinite(loss):
        prepare.abort_diverged(loader.steps, loss.item())
    opt.zero_grad()
    loss.backward()
    opt.step()
prepare.report(cfg, num_steps=loader.steps, seen_tokens=loader.tokens)
raise RuntimeError("boom after the handover")
