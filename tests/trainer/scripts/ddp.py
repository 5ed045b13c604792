"""Two CPU processes under torchrun (gloo) all-reduce their ranks, train a bigram each on their own
share of the data (the harness stops both at the same batch), and rank 0's model is scored."""

import torch
import torch.distributed as dist

import prepare

cfg = prepare.run_config()
dist.init_process_group("gloo")
total = torch.tensor([float(cfg.rank + 1)])
dist.all_reduce(total)
expected = cfg.world_size * (cfg.world_size + 1) / 2
assert total.item() == expected, (total.item(), expected)
vocab = prepare.load_tokenizer().vocab_size
torch.manual_seed(cfg.seed)  # the same bigram on every rank
model = torch.nn.Embedding(vocab, vocab)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
loader = prepare.train_loader(model, batch_size=8, accum=2)
for i, (x, y) in enumerate(loader):
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    if i % 2 == 1:
        for p in model.parameters():  # average the gradients by hand (no DDP wrapper needed)
            dist.all_reduce(p.grad)
            p.grad /= cfg.world_size
        opt.step()
        opt.zero_grad()
batches = torch.tensor([float(loader.batches)])
dist.all_reduce(batches)
dist.barrier()
dist.destroy_process_group()
prepare.report(cfg, world=cfg.world_size, ranks=total.item(), batches_all_ranks=batches.item())
