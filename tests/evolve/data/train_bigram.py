"""A small, fast, deterministic train.py for the engine's tests.

A factorized bigram model trained on the first STEPS batches the harness serves (the tests give it
a budget of 40 in tokens), on one thread, so a score depends only on the code and the seed, never
on how loaded the machine is. Its learning rates start far too low, so the search has something
real to find.
"""

import torch
import torch.nn.functional as F

import prepare

# ---- hyperparameters: the search edits these ----
EMB_LR = 0.002  # too low on purpose
HEAD_LR = 0.002  # too low on purpose
DIM = 32
STEPS = 30  # batches trained on; the rest of what the budget serves is let go by
BATCH_SIZE = 8
INIT_STD = 0.02
BETA1 = 0.9

cfg = prepare.run_config()
torch.manual_seed(cfg.seed)
torch.set_num_threads(1)
vocab = prepare.load_tokenizer().vocab_size


class Bigram(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, DIM)
        self.head = torch.nn.Linear(DIM, vocab, bias=False)
        torch.nn.init.normal_(self.emb.weight, std=INIT_STD)
        torch.nn.init.normal_(self.head.weight, std=INIT_STD)

    def forward(self, x):
        return self.head(self.emb(x))


model = Bigram()
opt = torch.optim.Adam(
    [{"params": model.emb.parameters(), "lr": EMB_LR}, {"params": model.head.parameters(), "lr": HEAD_LR}],
    betas=(BETA1, 0.99),
)
loader = prepare.train_loader(model, batch_size=BATCH_SIZE)
for i, (x, y) in enumerate(loader):
    if i >= STEPS:
        continue
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    if not torch.isfinite(loss):
        prepare.abort_diverged(loader.steps, loss.item())
    opt.zero_grad()
    loss.backward()
    opt.step()
prepare.report(cfg, num_steps=min(STEPS, loader.steps), depth=cfg.depth)
