"""Records when it ran and on which device to $MARK_DIR, sleeps a moment, then trains a bigram.

With $BARRIER_N > 0 it first waits (up to 60 s) until that many runs have reached $BARRIER_DIR,
so that runs meant to overlap do, however long each took to start."""

import json
import os
import time

import torch

import prepare

cfg = prepare.run_config()
if int(os.environ.get("BARRIER_N", "0")):
    barrier = os.environ["BARRIER_DIR"]
    open(os.path.join(barrier, str(cfg.seed)), "w").close()
    give_up = time.time() + 60
    while len(os.listdir(barrier)) < int(os.environ["BARRIER_N"]) and time.time() < give_up:
        time.sleep(0.05)
start = time.time()
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
