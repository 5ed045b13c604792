"""Dumps the environment and the file system it sees to $DUMP_PATH, then trains a bigram honestly."""

import json
import os

import torch

import prepare

seen = dict(os.environ)
with open("/proc/self/environ", "rb") as f:
    initial = [entry.decode(errors="replace") for entry in f.read().split(b"\0") if entry]
listing = {d: sorted(os.listdir(d)) for d in ("/", "/evolve", "/evolve/data") if os.path.isdir(d)}
found = {p: os.path.exists(p) for p in seen.get("LOOK_FOR", "").split(":") if p}
with open(seen["DUMP_PATH"], "w") as f:
    json.dump(
        {"environ": seen, "initial": initial, "listing": listing, "cwd": os.getcwd(), "found": found}, f
    )
cfg = prepare.run_config()
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
for _x, _y in prepare.train_loader(model, batch_size=8):
    pass
