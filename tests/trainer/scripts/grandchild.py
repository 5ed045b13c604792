"""Starts two grandchildren that touch a file forever (one in its own session) and exits without waiting."""

import os
import subprocess
import sys

import torch

import prepare

cfg = prepare.run_config()
beat = os.environ["BEAT_DIR"]
for name in ("child", "detached"):
    loop = f"import pathlib, time\nwhile True:\n    pathlib.Path({beat!r}, {name!r}).touch()\n    time.sleep(0.05)"
    subprocess.Popen([sys.executable, "-c", loop], start_new_session=name == "detached")
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
for _x, _y in prepare.train_loader(model, batch_size=8):
    pass
