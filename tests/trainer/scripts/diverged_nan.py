"""Trains to the end, but the model it hands over gives NaN logits: the evaluator's val_bpb is NaN."""

import torch

import prepare

cfg = prepare.run_config()
vocab = prepare.load_tokenizer().vocab_size
model = torch.nn.Embedding(vocab, vocab)
for _x, _y in prepare.train_loader(model, batch_size=8):
    with torch.no_grad():
        model.weight.fill_(float("nan"))  # the weights it ends with
