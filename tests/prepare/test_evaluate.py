"""The evaluator scores where the run trains: the device and the precision are the harness's, never the graph's."""

from __future__ import annotations

import json
import os

import torch

from prepare import evaluate
from prepare.artifact import export_graph, pack_weights


class Bigram(torch.nn.Module):
    def __init__(self, vocab: int = 1024):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 16)
        self.out = torch.nn.Linear(16, vocab, bias=False)

    def forward(self, x):
        return self.out(self.emb(x))


def _score(tmp_path, data, device: str) -> dict:
    model = Bigram()
    handed = export_graph(model, seq_len=256, vocab=1024, batch_size=2)  # traced on this host's CPU
    (tmp_path / "graph.bin").write_bytes(handed.graph)
    (tmp_path / "weights.bin").write_bytes(pack_weights(model, handed.weight_names))
    read, write = os.pipe()
    evaluate.main([
        "--graph", str(tmp_path / "graph.bin"), "--weights", str(tmp_path / "weights.bin"), "--data", str(data),
        "--seq-len", "256", "--eval-tokens", "4096", "--device", device, "--result-fd", str(write),
    ])  # fmt: skip
    with os.fdopen(read, "rb") as f:
        return json.loads(f.read())


def test_a_model_traced_on_the_cpu_of_a_gpu_run_is_not_scored_on_the_cpu(tmp_path, tiny_data):
    # Seen in review: the graph's own device chose the scoring device, so a GPU run whose model was
    # traced before it moved to the GPU was scored in float32 on the CPU, not as every other child.
    # Where the evaluator has a GPU, that is refused; on a host without one (the executor tests
    # fake GPU indices there), the CPU is the only device and the model is scored on it.
    result = _score(tmp_path, tiny_data, "cuda")
    if torch.cuda.is_available():
        assert result["status"] == "invalid"
        assert "traced on cpu, but the run trains on cuda" in result["reason"]
    else:
        assert result["status"] == "ok"


def test_a_cpu_run_s_model_is_scored_on_the_cpu(tmp_path, tiny_data):
    result = _score(tmp_path, tiny_data, "cpu")
    assert result["status"] == "ok" and 0 < result["val_bpb"] < 20
