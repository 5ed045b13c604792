"""Records when it ran and on which device to $MARK_DIR, sleeps a moment, and reports."""

import json
import os
import time

import torch

import prepare

cfg = prepare.run_config()
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
val_bpb = prepare.evaluate_bpb(torch.nn.Embedding(vocab, vocab))  # a real score of an untrained bigram
prepare.report(cfg, val_bpb=val_bpb, training_seconds=time.time() - start)
