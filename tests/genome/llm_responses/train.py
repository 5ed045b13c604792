"""A small train.py in the shape of the baseline: the file the corpus' LLM answers edit."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

# =====================================================================================
# HYPERPARAMETERS: meant to be edited.
# =====================================================================================
N_EMBD = 64  # model width
N_HEAD = 4
MLP_RATIO = 4
LEARNING_RATE = 3e-3  # AdamW
WEIGHT_DECAY = 0.1
ADAM_BETAS = (0.9, 0.95)
WARMDOWN_FRAC = 0.5  # fraction of the budget spent decaying the lr
DROPOUT = 0.0
USE_BIAS = False
BATCH_SIZE = 8
TOTAL_BATCH_TOKENS = 2**12
GRAD_CLIP = -1.0  # negative: no clipping
ACTIVATION = "relu2"

cfg = prepare.run_config()
torch.manual_seed(cfg.seed)
device = torch.device(cfg.device)
tokenizer = prepare.load_tokenizer()
seq_len = cfg.profile.seq_len


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, MLP_RATIO * dim, bias=USE_BIAS)
        self.c_proj = nn.Linear(MLP_RATIO * dim, dim, bias=USE_BIAS)

    def forward(self, x):
        x = self.c_fc(x)
        x = F.relu(x).square()
        return self.c_proj(x)


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, N_HEAD, dropout=DROPOUT, bias=USE_BIAS, batch_first=True)
        self.mlp = MLP(dim)

    def forward(self, x, mask):
        h = F.rms_norm(x, (x.size(-1),))
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = F.rms_norm(x, (x.size(-1),))
        x = x + self.mlp(h)
        return x


class GPT(nn.Module):
    def __init__(self, vocab_size, depth):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, N_EMBD)
        self.blocks = nn.ModuleList(Block(N_EMBD) for _ in range(depth))
        self.lm_head = nn.Linear(N_EMBD, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=idx.device), diagonal=1)
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, mask)
        logits = self.lm_head(F.rms_norm(x, (x.size(-1),)))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def lr_multiplier(progress):
    """Constant, then a linear warm-down over the last WARMDOWN_FRAC of the budget."""
    if progress < 1.0 - WARMDOWN_FRAC:
        return 1.0
    return max(0.0, (1.0 - progress) / WARMDOWN_FRAC)


model = GPT(tokenizer.vocab_size, cfg.depth).to(device)
optimizer = torch.optim.AdamW(
    model.parameters(), lr=LEARNING_RATE, betas=ADAM_BETAS, weight_decay=WEIGHT_DECAY
)
accum = max(1, TOTAL_BATCH_TOKENS // (BATCH_SIZE * seq_len))
loader = prepare.train_loader(model, batch_size=BATCH_SIZE, accum=accum)

step = 0
for i, (x, y) in enumerate(loader):
    loss = model(x, y)
    (loss / accum).backward()
    if (i + 1) % accum:
        continue
    lrm = lr_multiplier(loader.progress)
    for group in optimizer.param_groups:
        group["lr"] = LEARNING_RATE * lrm
    if GRAD_CLIP > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(loss.item()):
        prepare.abort_diverged(step, loss.item())
    step += 1

prepare.report(
    cfg,
    peak_vram_mb=0.0,
    mfu_percent=0.0,
    num_steps=step,
    num_params_M=sum(p.numel() for p in model.parameters()) / 1e6,
    depth=cfg.depth,
)
