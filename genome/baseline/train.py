"""Generation 0: a small modern GPT, trained on what the harness serves until the budget is spent.

Run it as `python train.py` (or `torchrun --nproc_per_node=N train.py`). Depth, seed, device and
sequence length come from `prepare.run_config()`; everything else is in the block below. The
harness owns the clock: `prepare.train_loader` serves batches until the budget (seconds or tokens)
is spent, hands the model to a separate evaluator, and `loader.progress` drives the schedule.
"""

import contextlib
import gc
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.nn.parallel import DistributedDataParallel as DDP

import prepare

# =====================================================================================
# HYPERPARAMETERS: meant to be edited. Literal constants only (a tool parses this block).
# =====================================================================================
# model shape
ASPECT_RATIO = 64  # model_dim = depth * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128
MLP_RATIO = 4
ROPE_BASE = 10000.0
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap): keeps early training calm
VALUE_EMBEDS = True  # token-indexed value embeddings, gated, on alternating layers (last one included)
VE_GATE_CHANNELS = 32  # the value-embedding gate reads this many channels of the block input
WINDOW_PATTERN = "L"  # per layer, cycled: "L" full causal, "S" sliding window; the last layer is always "L"
SHORT_WINDOW = 1024  # tokens an "S" layer sees (FlexAttention on CUDA, an SDPA mask on CPU)
RESID_INIT = 1.0  # per-layer scale of the residual stream
X0_INIT = 0.1  # per-layer mix-in of the normalized token embedding
# optimization
EMBEDDING_LR = 0.3  # AdamW, token and value embeddings
UNEMBEDDING_LR = 0.004  # AdamW, lm head
MATRIX_LR = 0.04  # Muon, every 2-D matrix inside the blocks
SCALAR_LR = 0.5  # AdamW, the per-layer scalars
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.2  # Muon only, decoupled (scaled by the current lr)
MUON_MOMENTUM = 0.95
MUON_MOMENTUM_START = 0.85  # ramped up to MUON_MOMENTUM over the warm-up fraction below
MUON_MOMENTUM_WARMUP = 0.1  # fraction of the budget
NS_STEPS = 5  # Newton-Schulz iterations per Muon update
# schedule, as fractions of the budget
WARMUP_FRAC = 0.0
WARMDOWN_FRAC = 0.5
FINAL_LR_FRAC = 0.0
# batch
TOTAL_BATCH_TOKENS = 524288  # 2**19 tokens per optimizer step, all devices together
DEVICE_BATCH_SIZE = 64  # rows per micro-step on one GPU at depth 12; scaled by 12*768/(depth*dim)
CPU_TOTAL_BATCH_TOKENS = 4096  # the CPU path (tests, demos) takes small steps
CPU_DEVICE_BATCH_SIZE = 16
COMPILE = True  # torch.compile on CUDA (the CPU path always runs eager)

# =====================================================================================
# Setup: run contract, devices, precision
# =====================================================================================
cfg = prepare.run_config()
cuda = cfg.device.startswith("cuda")
ddp = cfg.world_size > 1
if cuda:
    torch.cuda.set_device(cfg.local_rank)
    torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left outside autocast
device = torch.device("cuda", cfg.local_rank) if cuda else torch.device("cpu")
if ddp:
    dist.init_process_group("nccl" if cuda else "gloo")
torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
tokenizer = prepare.load_tokenizer()
seq_len = cfg.profile.seq_len


def log(msg: str) -> None:
    if cfg.is_master:
        print(msg, flush=True)


def amp():
    """bf16 autocast on CUDA; plain float32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()


def sync() -> None:
    if cuda:
        torch.cuda.synchronize()


# =====================================================================================
# Model
# =====================================================================================
def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))  # parameter-free: the next matrix does the scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def window_mask(window: int, T: int, flex: bool):
    """A sliding causal window: a FlexAttention block mask, or a boolean SDPA mask."""
    if flex:
        fn = lambda b, h, q, kv: (q >= kv) & (q - kv < window)
        return create_block_mask(fn, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
    i = torch.arange(T, device=device)
    return (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, value_embed: bool):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, n_head, bias=False) if value_embed else None

    def forward(self, x, ve, rope, mask):
        B, T, C = x.shape
        shape = (B, T, self.n_head, self.head_dim)
        q, k, v = self.c_q(x).view(shape), self.c_k(x).view(shape), self.c_v(x).view(shape)
        dtype = v.dtype  # bf16 under autocast: SDPA's flash kernel wants all three in it
        if ve is not None:  # gate starts at 1 (zero-init weights) and learns per head how much to mix in
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve.view(shape)
        q, k = apply_rope(norm(q), *rope), apply_rope(norm(k), *rope)  # QK-norm, then rotate
        q, k, v = (t.transpose(1, 2).to(dtype) for t in (q, k, v))
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif isinstance(mask, BlockMask):
            y = flex_attention(q, k, v, block_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.c_proj = nn.Linear(MLP_RATIO * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2: sparse and cheap


class Block(nn.Module):
    def __init__(self, dim: int, n_head: int, value_embed: bool):
        super().__init__()
        self.attn = Attention(dim, n_head, value_embed)
        self.mlp = MLP(dim)

    def forward(self, x, ve, rope, mask):
        x = x + self.attn(norm(x), ve, rope, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, depth: int, T: int):
        super().__init__()
        self.depth = depth
        self.dim = math.ceil(depth * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
        self.n_head = self.dim // HEAD_DIM
        self.ve_layers = [i for i in range(depth) if VALUE_EMBEDS and i % 2 == (depth - 1) % 2]
        self.wte = nn.Embedding(vocab_size, self.dim)
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(vocab_size, self.dim) for i in self.ve_layers}
        )
        self.blocks = nn.ModuleList(Block(self.dim, self.n_head, i in self.ve_layers) for i in range(depth))
        self.lm_head = nn.Linear(self.dim, vocab_size, bias=False)  # untied from wte
        self.resid_lambdas = nn.Parameter(torch.full((depth,), RESID_INIT))
        self.x0_lambdas = nn.Parameter(torch.full((depth,), X0_INIT))
        inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)
        angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)[None, :, None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        # None means full causal attention (SDPA is_causal, the fastest kernel). Training on CUDA
        # uses FlexAttention for "S" layers; the scored model (eval mode) takes the SDPA mask.
        windows = [WINDOW_PATTERN[i % len(WINDOW_PATTERN)] for i in range(depth)]
        windows[-1] = "L"
        short = "S" in windows and SHORT_WINDOW < T
        train_mask = window_mask(SHORT_WINDOW, T, flex=cuda) if short else None
        eval_mask = window_mask(SHORT_WINDOW, T, flex=False) if short else None
        self.masks = [(train_mask, eval_mask) if w == "S" else (None, None) for w in windows]

    @torch.no_grad()
    def init_weights(self) -> None:
        bound = 3**0.5 * self.dim**-0.5  # uniform with std 1/sqrt(dim)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                lin.weight.uniform_(-bound, bound)
            block.attn.c_proj.weight.zero_()  # every block starts as the identity
            block.mlp.c_proj.weight.zero_()
            if block.attn.ve_gate is not None:
                block.attn.ve_gate.weight.zero_()
        self.wte.weight.normal_(0.0, 1.0)
        for emb in self.value_embeds.values():
            emb.weight.uniform_(-bound, bound)
        self.lm_head.weight.normal_(0.0, 0.001)  # near-uniform predictions at step 0

    def forward(self, idx, targets=None):
        T = idx.size(1)
        rope = (self.cos[:, :T], self.sin[:, :T])
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if i in self.ve_layers else None
            x = block(x, ve, rope, self.masks[i][0 if self.training else 1])
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def flops_per_token(self, T: int) -> float:
        """Forward+backward FLOPs: 6 per matmul weight, plus attention scores over each layer's window."""
        lookups = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        matmul = sum(p.numel() for p in self.parameters()) - lookups
        seen = sum(T if m is None else min(SHORT_WINDOW, T) for m, _ in self.masks)
        return 6 * matmul + 12 * self.dim * seen


# =====================================================================================
# Optimizers: Muon for the block matrices, AdamW for the rest
# =====================================================================================
def orthogonalize(g: torch.Tensor) -> torch.Tensor:
    """Newton-Schulz iteration: drives every singular value of each matrix in g toward 1."""
    a, b, c = 3.4445, -4.7750, 2.0315  # quintic coefficients tuned for fast convergence
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the smaller Gram matrix
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(NS_STEPS):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum (Nesterov), then an orthogonalized update. Same-shape matrices are updated as one stack."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float):
        by_shape: dict[tuple, list] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        groups = [dict(params=ps) for ps in by_shape.values()]
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            ps, mu, lr = group["params"], group["momentum"], group["lr"]
            g = torch.stack([p.grad for p in ps])
            state = self.state[ps[0]]
            if "buf" not in state:
                state["buf"] = torch.zeros_like(g)
            state["buf"].lerp_(g, 1 - mu)
            update = orthogonalize(g.lerp_(state["buf"], mu)).to(ps[0].dtype)
            scale = max(1.0, ps[0].size(0) / ps[0].size(1)) ** 0.5  # tall matrices take bigger steps
            torch._foreach_mul_(ps, 1 - lr * group["weight_decay"])
            torch._foreach_add_(ps, list(update.unbind(0)), alpha=-lr * scale)


def lr_multiplier(progress: float) -> float:
    """Warm-up, constant, then linear warm-down to FINAL_LR_FRAC, all in fractions of the budget."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress < 1.0 - WARMDOWN_FRAC:
        return 1.0
    left = (1.0 - progress) / WARMDOWN_FRAC
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * max(0.0, left)


# =====================================================================================
# Build
# =====================================================================================
with torch.device(device):
    raw_model = GPT(tokenizer.vocab_size, cfg.depth, seq_len)
raw_model.init_weights()
num_params = sum(p.numel() for p in raw_model.parameters())
flops_per_token = raw_model.flops_per_token(seq_len)

dim_scale = (raw_model.dim / 768) ** -0.5  # AdamW lrs were tuned at width 768
embeddings = [raw_model.wte.weight, *(e.weight for e in raw_model.value_embeds.values())]
adam = torch.optim.AdamW(
    [
        dict(params=[raw_model.lm_head.weight], lr=UNEMBEDDING_LR * dim_scale),
        dict(params=embeddings, lr=EMBEDDING_LR * dim_scale),
        dict(params=[raw_model.x0_lambdas], lr=SCALAR_LR),
        dict(params=[raw_model.resid_lambdas], lr=SCALAR_LR * 0.01),  # it scales the whole stream
    ],
    betas=ADAM_BETAS,
    eps=1e-10,
    weight_decay=0.0,
    fused=cuda,
)
muon = Muon(raw_model.blocks.parameters(), lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
optimizers = [adam, muon]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

model = torch.compile(raw_model, dynamic=False) if cuda and COMPILE else raw_model
train_model = DDP(model, device_ids=[cfg.local_rank] if cuda else None) if ddp else model

# Rows per micro-step: activation memory grows with depth * width, so bigger models take fewer rows.
if cuda:
    rows = max(1, DEVICE_BATCH_SIZE * 12 * 768 // (cfg.depth * raw_model.dim))
    rows = 2 ** int(math.log2(rows))
    total_tokens = TOTAL_BATCH_TOKENS
else:
    rows, total_tokens = CPU_DEVICE_BATCH_SIZE, CPU_TOTAL_BATCH_TOKENS
rows = max(1, min(rows, total_tokens // (seq_len * cfg.world_size)))
accum = max(1, total_tokens // (rows * seq_len * cfg.world_size))
tokens_per_step = accum * rows * seq_len * cfg.world_size
loader = prepare.train_loader(raw_model, batch_size=rows, accum=accum)

log(
    f"depth {cfg.depth} | dim {raw_model.dim} | heads {raw_model.n_head} | params {num_params / 1e6:.2f}M"
    f" | value-embed layers {raw_model.ve_layers} | device {cfg.device} x{cfg.world_size}"
    f" | batch {rows}x{seq_len} x{accum} accum = {tokens_per_step} tokens/step | budget {cfg.budget:g} {cfg.budget_unit}"
)

# =====================================================================================
# Warm up on random tokens (compile, lazy set-up: not charged), then train until the data ends
# =====================================================================================
for x, y in loader.warmup(steps=2 if cuda else 1):
    with amp():
        train_model(x, y).backward()
train_model.zero_grad(set_to_none=True)
gc.collect()  # Python's cyclic GC causes stalls of ~0.5 s; nothing below needs it
gc.freeze()
gc.disable()

peak_flops = 989e12 * cfg.world_size  # H100 / H200 SXM bf16 dense, datasheet
step = 0
loss_sum = torch.zeros((), device=device)
for i, (x, y) in enumerate(loader):
    micro = i % accum
    if ddp:  # all-reduce gradients only on the last micro-step
        train_model.require_backward_grad_sync = micro == accum - 1
    with amp():
        loss = train_model(x, y)
    (loss / accum).backward()
    loss_sum += loss.detach()
    if micro < accum - 1:
        continue
    progress = loader.progress  # the harness's: the same on every rank
    lrm = lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
    ramp = min(1.0, progress / MUON_MOMENTUM_WARMUP) if MUON_MOMENTUM_WARMUP > 0 else 1.0
    for group in muon.param_groups:
        group["momentum"] = MUON_MOMENTUM_START + (MUON_MOMENTUM - MUON_MOMENTUM_START) * ramp
    for opt in optimizers:
        opt.step()
    train_model.zero_grad(set_to_none=True)

    train_loss = loss_sum / accum
    loss_sum = torch.zeros((), device=device)
    if ddp:  # every rank sees the same loss, so every rank stops together on divergence
        dist.all_reduce(train_loss)
        train_loss /= cfg.world_size
    loss_value = train_loss.item()  # also waits for the step to finish
    if not math.isfinite(loss_value) or loss_value > 100:
        prepare.abort_diverged(step, loss_value)
    if step % 25 == 0:
        tok_s = loader.tokens / max(loader.seconds, 1e-9)
        mfu = 100 * flops_per_token * tok_s / peak_flops if cuda else 0.0
        log(
            f"step {step:05d} | loss {loss_value:.4f} | lrm {lrm:.2f} | {tok_s:,.0f} tok/s"
            f" | mfu {mfu:.1f}% | {100 * progress:.0f}% of the budget"
        )
    step += 1

# =====================================================================================
# Report (the harness has the weights already and scores them in a fresh process)
# =====================================================================================
tokens_per_second = loader.tokens / max(loader.seconds, 1e-9)
mfu_percent = 100 * flops_per_token * tokens_per_second / peak_flops if cuda else 0.0
peak_vram_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
if ddp:
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()
prepare.report(
    cfg,
    peak_vram_mb=peak_vram_mb,
    mfu_percent=mfu_percent,
    num_steps=step,
    num_params_M=num_params / 1e6,
    depth=cfg.depth,
)
