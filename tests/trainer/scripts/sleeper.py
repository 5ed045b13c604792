"""Records when it ran and on which device to $MARK_DIR, sleeps a moment, then trains a bigram.

With $BARRIER_N > 0 it first waits until that many runs (counted by seed: the ranks of one run are
one) have reached $BARRIER_DIR, so that runs meant to be running at once provably are: a run passes
the barrier only while another is alive. Its "start" is its arrival, so the [start, end] of two
runs that met there overlap whatever the machine's load. A run still alone after 120 s (a hang
guard, not a timing assumption) fails, naming the barrier."""

import json
import os
import sys
import time

import torch

import prepare

cfg = prepare.run_config()
start = time.time()
if int(os.environ.get("BARRIER_N", "0")):
    barrier, wanted = os.environ["BARRIER_DIR"], int(os.environ["BARRIER_N"])
    open(os.path.join(barrier, f"arrived-{cfg.seed}"), "w").close()

    def arrived() -> int:
        return sum(name.startswith("arrived-") for name in os.listdir(barrier))

    give_up = time.time() + 120
    while arrived() < wanted:
        if time.time() > give_up:
            sys.exit(
                f"barrier: {arrived()} of {wanted} runs arrived in 120 s (they were not running at once)"
            )
        time.sleep(0.05)
time.sleep(float(os.environ.get("SLEEP", "1.0")))
mark = {
    "start": start,
    "end": time.time(),
    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "device": cfg.device,
    "seed": cfg.seed,
    "rank": cfg.rank,
}
with open(os.path.join(os.environ["MARK_DIR"], f"{cfg.seed}-{cfg.rank}.json"), "w") as f:
    json.dump(mark, f)
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
for _x, _y in prepare.train_loader(model, batch_size=8):
    pass
