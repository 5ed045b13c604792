"""Dumps the environment it sees (os.environ and the process's initial /proc/self/environ) to $DUMP_PATH."""

import json
import os

import torch

import prepare

seen = dict(os.environ)
with open("/proc/self/environ", "rb") as f:
    initial = [entry.decode(errors="replace") for entry in f.read().split(b"\0") if entry]
with open(seen["DUMP_PATH"], "w") as f:
    json.dump({"environ": seen, "initial": initial}, f)
cfg = prepare.run_config()
vocab = prepare.load_tokenizer().vocab_size
val_bpb = prepare.evaluate_bpb(torch.nn.Embedding(vocab, vocab))  # a real score of an untrained bigram
prepare.report(cfg, val_bpb=val_bpb, training_seconds=0.0)  # it trained nothing
