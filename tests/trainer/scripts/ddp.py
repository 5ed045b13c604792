"""Two CPU processes under torchrun (gloo) all-reduce their ranks, score a model together, and report from rank 0."""

import time

import torch
import torch.distributed as dist

import prepare

cfg = prepare.run_config()
start = time.time()
dist.init_process_group("gloo")
total = torch.tensor([float(cfg.rank + 1)])
dist.all_reduce(total)
expected = cfg.world_size * (cfg.world_size + 1) / 2
assert total.item() == expected, (total.item(), expected)
vocab = prepare.load_tokenizer().vocab_size
torch.manual_seed(cfg.seed)  # the same untrained bigram on every rank
val_bpb = prepare.evaluate_bpb(torch.nn.Embedding(vocab, vocab))  # ranks score different rows
dist.barrier()
dist.destroy_process_group()
prepare.report(
    cfg, val_bpb=val_bpb, training_seconds=time.time() - start, world=cfg.world_size, ranks=total.item()
)
