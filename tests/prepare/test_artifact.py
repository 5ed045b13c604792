"""The scored model as data: export to allow-listed ATen ops, a faithful rebuild, and refusals of anything else."""

from __future__ import annotations

import json
import struct

import pytest
import torch
import torch.nn.functional as F

from prepare import artifact
from prepare.artifact import ArtifactError, export_graph, load, pack_weights

V, T = 50, 12


class Small(torch.nn.Module):
    """Embeddings, causal attention, a norm, a projection, a non-persistent buffer and a plain tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(V, 16)
        self.qkv = torch.nn.Linear(16, 48, bias=False)
        self.out = torch.nn.Linear(16, V, bias=False)
        self.register_buffer("scale", torch.full((16,), 0.5), persistent=False)
        self.bias = torch.linspace(-1, 1, V)  # a plain attribute: traced as a constant

    def forward(self, x):
        h = self.emb(x) * self.scale
        q, k, v = self.qkv(h).view(x.shape[0], x.shape[1], 3, 1, 16).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        y = F.rms_norm(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], 16), (16,))
        y.add_(1.0)  # in place on an intermediate: functionalized away
        return self.out(y) + self.bias


def _tokens(b=3):
    return torch.randint(0, V, (b, T), generator=torch.Generator().manual_seed(1))


def test_a_model_is_rebuilt_from_its_graph_and_weights_and_computes_the_same():
    model = Small()
    handover = export_graph(model, T, V, batch_size=4)
    with torch.no_grad():
        model.out.weight.mul_(2)  # trained after the trace: the weights carry it, the graph does not need to
        expected = model(_tokens(5))
    rebuilt = load(handover.graph, pack_weights(model, handover.weight_names))
    assert rebuilt.batch == "dynamic" and rebuilt.num_params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(rebuilt(_tokens(5)), expected, atol=1e-6)
    assert set(handover.weight_names) == {"emb.weight", "qkv.weight", "out.weight", "scale"}
    assert artifact.weight_bytes_of(handover.graph) == 4 * (V * 16 + 16 * 48 + 16 * V + 16)


def test_a_model_with_a_fixed_batch_is_exported_at_the_loaders_batch():
    class Fixed(Small):
        def forward(self, x):
            return super().forward(x).view(4, T, V)  # only a batch of 4 fits this view

    model = Fixed()
    handover = export_graph(model, T, V, batch_size=4)
    rebuilt = load(handover.graph, pack_weights(model, handover.weight_names))
    assert rebuilt.batch == 4
    with torch.no_grad():
        assert torch.allclose(rebuilt(_tokens(4)), model(_tokens(4)), atol=1e-6)


def test_a_model_that_changes_its_buffers_is_not_a_scored_model():
    class Stateful(Small):
        def forward(self, x):
            self.scale.add_(1.0)  # remembers it was called: could tell a probe from a scored row
            return super().forward(x)

    with pytest.raises(ArtifactError, match="changes its own buffers"):
        export_graph(Stateful(), T, V, batch_size=4)


def test_random_and_unknown_operations_are_refused_at_export():
    class Noisy(Small):
        def forward(self, x):
            return super().forward(x) + torch.rand(V)

    with pytest.raises(ArtifactError, match="aten.rand"):
        export_graph(Noisy(), T, V, batch_size=4)


def _edit(blob: bytes, change) -> bytes:
    (n,) = struct.unpack(">Q", blob[8:16])
    index = json.loads(blob[16 : 16 + n])
    change(index)
    head = json.dumps(index).encode()
    return blob[:8] + struct.pack(">Q", len(head)) + head + blob[16 + n :]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ix: ix["nodes"][0].update(target="aten.from_file.default"), "aten.from_file"),
        (lambda ix: ix["nodes"][0].update(target="builtins.eval"), "builtins.eval"),
        (lambda ix: ix["nodes"][0].update(args=["__import__('os').system('id')"]), "string"),
        (lambda ix: ix["nodes"][0].update(args=[{"pickle": "gASV"}]), "does not accept"),
        (lambda ix: ix["nodes"][0].update(args=[{"node": "v9999"}]), "does not accept"),
        (lambda ix: ix["inputs"].append({"name": "x2", "kind": "tokens", "target": None}), "token input"),
        (lambda ix: ix["inputs"][0].update(kind="custom_obj"), "lack"),
        (lambda ix: ix.update(batch=-3), "batch size"),
    ],
)
def test_a_forged_graph_is_refused_before_anything_runs(change, message):
    model = Small()
    handover = export_graph(model, T, V, batch_size=4)
    forged = _edit(handover.graph, change)
    with pytest.raises(ArtifactError, match=message):
        load(forged, pack_weights(model, handover.weight_names))


def test_weights_that_do_not_fit_the_graph_are_refused():
    model = Small()
    handover = export_graph(model, T, V, batch_size=4)
    other = Small()
    other.out = torch.nn.Linear(16, V + 1, bias=False)
    with pytest.raises(ArtifactError, match="graph reads"):
        load(handover.graph, pack_weights(other, handover.weight_names))
    with pytest.raises(ArtifactError, match="not an autoevolve artifact"):
        load(handover.graph, b"\x80\x04pickle")
    with pytest.raises(ArtifactError, match="truncated"):
        load(handover.graph, pack_weights(model, handover.weight_names)[:-8])
