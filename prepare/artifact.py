"""The scored model as data: a graph of allow-listed ATen operations and its tensors, never code.

The training process hands the harness its model in two parts. Before the first training batch,
`export_graph` traces the model (`torch.export`, eval mode) into a functional ATen graph and
packs it, with the constant tensors the trace captured, into bytes. Right after the last batch,
`pack_weights` packs the live parameters and buffers. A fresh evaluator process that the training
process never touched rebuilds a callable from both with `load`: every operation is looked up in
ALLOWED_OPS by name (nothing else can be called), every value is a number, a tensor of the
payload, or one of a few enums (nothing is unpickled), and the result is a pure function of the
token ids: it cannot keep state between calls, read a file, or draw random numbers.

Container: b"EVOLVEA1", an 8-byte big-endian index length, a JSON index, then the raw tensor bytes.
"""

from __future__ import annotations

import json
import math
import operator
import struct
import warnings
from dataclasses import dataclass

import torch

from .errors import PrepareError

MAGIC = b"EVOLVEA1"
MAX_BATCH = 1 << 16

# Operations a scored model may use: functional math, shape and indexing ops. Nothing that reads
# or writes anything but its arguments, nothing random, nothing in place (the graph is
# functionalized before it is packed, so in-place ops of the model's code become their pure forms).
ALLOWED_OPS = frozenset(
    f"aten.{name}"
    for name in """
    abs.default acos.default acosh.default add.Tensor add.Scalar addcdiv.default addcmul.default
    addmm.default alias.default amax.default amin.default any.default any.dim all.default all.dim
    arange.default arange.start arange.start_step argmax.default argmin.default
    asin.default atan.default atan2.default baddbmm.default bitwise_and.Tensor bitwise_not.default
    bitwise_or.Tensor bitwise_xor.Tensor bmm.default cat.default ceil.default chunk.default
    clamp.default clamp.Tensor clamp_max.default clamp_min.default clone.default
    constant_pad_nd.default contiguous.default cos.default cosh.default cumsum.default
    detach.default diagonal.default div.Tensor div.Scalar div.Tensor_mode dropout.default
    einsum.default elu.default embedding.default eq.Tensor eq.Scalar erf.default exp.default
    exp2.default expand.default expand_as.default expm1.default fill.Scalar flatten.using_ints
    flip.default floor.default floor_divide.default fmod.Tensor fmod.Scalar full.default
    full_like.default gather.default ge.Tensor ge.Scalar gelu.default group_norm.default
    gt.Tensor gt.Scalar hardtanh.default index.Tensor index_select.default isinf.default
    isnan.default layer_norm.default le.Tensor le.Scalar leaky_relu.default lerp.Scalar
    lerp.Tensor lift_fresh_copy.default linalg_vector_norm.default linear.default log.default
    log1p.default log2.default log_softmax.int logical_and.default logical_not.default
    logical_or.default logsumexp.default lt.Tensor lt.Scalar masked_fill.Scalar
    masked_fill.Tensor matmul.default max.default max.dim maximum.default mean.default mean.dim
    min.default min.dim minimum.default mm.default mul.Tensor mul.Scalar narrow.default
    native_layer_norm.default ne.Tensor ne.Scalar neg.default new_ones.default new_zeros.default
    new_full.default norm.ScalarOpt_dim one_hot.default ones.default ones_like.default pad.default
    permute.default pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar prod.default prod.dim_int
    reciprocal.default relu.default remainder.Tensor remainder.Scalar repeat.default
    repeat_interleave.self_int repeat_interleave.Tensor reshape.default rms_norm.default
    roll.default round.default rsqrt.default rsub.Scalar rsub.Tensor
    scaled_dot_product_attention.default scalar_tensor.default select.int sigmoid.default
    sign.default silu.default sin.default sinh.default slice.Tensor softmax.int softplus.default
    sort.default split.Tensor split_with_sizes.default sqrt.default square.default squeeze.dim
    squeeze.dims squeeze.default stack.default std.correction sub.Tensor sub.Scalar sum.default
    sum.dim_IntList sym_size.int sym_numel.default t.default tan.default tanh.default
    topk.default transpose.int tril.default triu.default trunc.default type_as.default
    unbind.int unflatten.int unsqueeze.default var.correction view.default view_as.default
    where.self where.ScalarSelf where.ScalarOther where.Scalar zeros.default zeros_like.default
    _assert_tensor_metadata.default _to_copy.default _softmax.default _log_softmax.default
    _unsafe_view.default to.dtype to.dtype_layout
    """.split()
)
# Python operators on sizes (a dynamic batch dimension gives SymInt arithmetic), and tuple access.
PY_OPS = {
    "getitem": operator.getitem,
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.floordiv": operator.floordiv,
    "operator.truediv": operator.truediv,
    "operator.mod": operator.mod,
    "operator.neg": operator.neg,
}
_PY_NAMES = {fn: name for name, fn in PY_OPS.items()}
# The only strings an argument may hold (e.g. gelu's approximate, div's rounding mode).
ALLOWED_STRINGS = frozenset({"none", "tanh", "floor", "trunc", "mean", "sum", "same", "valid", "constant"})
_DTYPES = {
    str(dt).removeprefix("torch."): dt
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
               torch.int16, torch.int8, torch.uint8, torch.bool)
}  # fmt: skip
_LAYOUTS = {"strided": torch.strided}
_FORMATS = {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format}


class ArtifactError(PrepareError):
    """The model cannot be handed over, or what was handed over is not a valid scored model."""


# ------------------------------------------------------------------------------------ packing
def _pack(index: dict, tensors: dict[str, torch.Tensor]) -> bytes:
    entries, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to("cpu").contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
        entries[name] = {"dtype": _dtype_name(data.dtype), "shape": list(data.shape), "offset": offset}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps({**index, "tensors": entries}, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack(">Q", len(head)), head, *blobs])


def _unpack(blob: bytes | memoryview, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    view = memoryview(blob)
    if bytes(view[:8]) != MAGIC or len(view) < 16:
        raise ArtifactError(f"the {what} is not an autoevolve artifact")
    (n,) = struct.unpack(">Q", view[8:16])
    if n > len(view) - 16:
        raise ArtifactError(f"the {what} is truncated")
    try:
        index = json.loads(bytes(view[16 : 16 + n]))
    except ValueError as exc:
        raise ArtifactError(f"the {what}'s index is not JSON: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("tensors"), dict):
        raise ArtifactError(f"the {what}'s index is malformed")
    base, tensors = 16 + n, {}
    for name, entry in index["tensors"].items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            offset = int(entry["offset"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"the {what} describes tensor {name!r} badly") from None
        if any(s < 0 for s in shape) or offset < 0:
            raise ArtifactError(f"the {what} describes tensor {name!r} badly")
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        start = base + offset
        if start + nbytes > len(view):
            raise ArtifactError(f"the {what} is truncated inside tensor {name!r}")
        raw = torch.frombuffer(bytearray(view[start : start + nbytes]), dtype=torch.uint8) if nbytes else None
        tensors[name] = raw.view(dtype).reshape(shape) if raw is not None else torch.empty(shape, dtype=dtype)
    return index, tensors


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ArtifactError(f"tensors of dtype {dtype} cannot be handed over")
    return name


def weight_bytes(graph_path) -> int:
    """Bytes of the weights a packed graph file reads (from its index alone); 0 when unreadable."""
    try:
        with open(graph_path, "rb") as f:
            return weight_bytes_of(f.read(16), f)
    except OSError:
        return 0


def weight_bytes_of(blob: bytes, rest=None) -> int:
    """The same for a packed graph in memory (or its first 16 bytes and the file they came from)."""
    try:
        if blob[:8] != MAGIC:
            return 0
        (n,) = struct.unpack(">Q", blob[8:16])
        index = json.loads(rest.read(min(n, 1 << 28)) if rest is not None else blob[16 : 16 + n])
        total = 0
        for entry in index.get("inputs", []):
            if entry.get("kind") in ("parameter", "buffer"):
                size = torch.empty((), dtype=_DTYPES[entry["dtype"]]).element_size()
                total += math.prod(int(s) for s in entry["shape"]) * size
        return total
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return 0


# ------------------------------------------------------------------------------------ export
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under torch.compile and DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module) or inner is model:
            return model
        model = inner


def _encode(value, names: dict) -> object:
    if isinstance(value, torch.fx.Node):
        return {"node": names[value]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v, names) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": _dtype_name(value)}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ArtifactError(
        f"the model's graph holds a {type(value).__name__} argument, which cannot be handed over"
    )


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    if target in _PY_NAMES:
        return _PY_NAMES[target]
    return getattr(target, "__name__", repr(target))


def scoring_precision(device: torch.device):
    """The precision a model is scored in: bf16 autocast on CUDA, plain float32 on the CPU."""
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _example_batch(seq_len: int, vocab: int, batch: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, max(1, vocab), (batch, seq_len), generator=gen).to(device)


def _device_of(model: torch.nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Handover:
    """What `export_graph` found: the packed graph and which live tensors make up the weights."""

    graph: bytes
    weight_names: tuple[str, ...]  # parameter and buffer names (module FQNs), in graph order


def export_graph(model: torch.nn.Module, seq_len: int, vocab: int, batch_size: int) -> Handover:
    """Trace `model` (eval mode) on token ids of shape (batch, seq_len) and pack its graph."""
    from torch.export import Dim, export
    from torch.export.graph_signature import ExportGraphSignature, InputKind

    module = unwrap(model)
    device = _device_of(module)
    was_training = module.training
    module.eval()
    try:
        # traced under the precision it is scored in (bf16 autocast on CUDA): casts the model makes
        # on purpose (`.float()` of the logits) are kept, where a float32 trace would drop them
        with torch.no_grad(), warnings.catch_warnings(), scoring_precision(device):
            warnings.simplefilter("ignore")
            try:
                ep = export(
                    module,
                    (_example_batch(seq_len, vocab, 2, device),),
                    dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},),
                    strict=False,
                )
                batch = "dynamic"
            except Exception:  # a model whose code fixes the batch size: export it at the loader's
                ep = export(module, (_example_batch(seq_len, vocab, batch_size, device),), strict=False)
                batch = batch_size
            if any(_needs_decomposition(n) for n in ep.graph.nodes):
                ep = ep.run_decompositions({})  # functional: in-place ops of the code become pure ones
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(
            f"the model could not be exported for scoring: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        module.train(was_training)

    signature: ExportGraphSignature = ep.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise ArtifactError(
            "the model's forward changes its own buffers or its input; a scored model must be pure"
        )
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    names: dict[torch.fx.Node, str] = {}
    inputs, constants, weights = [], {}, []
    for node, spec in zip(placeholders, signature.input_specs, strict=True):
        names[node] = f"v{len(names)}"
        val = node.meta.get("val")
        entry = {"name": names[node], "kind": spec.kind.name.lower(), "target": spec.target}
        if isinstance(val, torch.Tensor):
            entry["dtype"], entry["shape"] = (
                _dtype_name(val.dtype),
                [int(s) if isinstance(s, int) else None for s in val.shape],
            )
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            weights.append(spec.target)
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            entry["kind"] = "constant"
            constants[spec.target] = ep.constants[spec.target]
        elif spec.kind == InputKind.USER_INPUT:
            entry["kind"] = "tokens"
        else:
            raise ArtifactError(
                f"the model's graph takes a {spec.kind.name} input, which cannot be handed over"
            )
        inputs.append(entry)
    if sum(e["kind"] == "tokens" for e in inputs) != 1:
        raise ArtifactError("the scored model must take exactly one input: the token ids")
    nodes, output = [], None
    for node in ep.graph.nodes:
        if node.op == "call_function":
            names[node] = f"v{len(names)}"
            target = _target_name(node.target)
            if target not in ALLOWED_OPS and target not in PY_OPS:
                raise ArtifactError(f"the model uses {target}, which the evaluator does not run")
            nodes.append({
                "name": names[node], "target": target,
                "args": _encode(list(node.args), names), "kwargs": _encode_kwargs(node.kwargs, names),
            })  # fmt: skip
        elif node.op == "output":
            output = _encode(node.args[0], names)
        elif node.op != "placeholder":
            raise ArtifactError(f"the model's graph has a {node.op} node, which cannot be handed over")
    if not (
        isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict) and "node" in output[0]
    ):
        raise ArtifactError("the scored model must return one tensor: the logits")
    index = {
        "inputs": inputs, "nodes": nodes, "output": output[0], "batch": batch, "seq_len": seq_len,
        "device": device.type,  # where it was traced: a CUDA model is scored on the GPU, a CPU one on the CPU
    }  # fmt: skip
    return Handover(graph=_pack(index, constants), weight_names=tuple(weights))


def _needs_decomposition(node: torch.fx.Node) -> bool:
    """An in-place op, or one outside ALLOWED_OPS that decomposing may turn into allowed ones."""
    if node.op != "call_function":
        return False
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.is_mutable or _target_name(target) not in ALLOWED_OPS
    return _target_name(target) not in PY_OPS


def _encode_kwargs(kwargs: dict, names: dict) -> dict:
    return {str(k): _encode(v, names) for k, v in kwargs.items()}


def pack_weights(model: torch.nn.Module, names: tuple[str, ...]) -> bytes:
    """The live values of the parameters and buffers the graph reads."""
    module = unwrap(model)
    state = dict(module.named_parameters(remove_duplicate=False))
    state.update(dict(module.named_buffers(remove_duplicate=False)))
    missing = [n for n in names if n not in state]
    if missing:
        raise ArtifactError(f"the model no longer has {missing[0]!r}, which its graph reads")
    return _pack({}, {n: state[n] for n in names})


# ------------------------------------------------------------------------------------ loading
class ScoredModel(torch.nn.Module):
    """The rebuilt graph with its tensors: `model(tokens)` -> logits."""

    def __init__(self, gm: torch.fx.GraphModule, tensors: list[torch.Tensor], batch, seq_len: int):
        super().__init__()
        self.gm = gm
        self.batch = batch  # "dynamic" or the one batch size the graph accepts
        self.seq_len = seq_len
        for i, t in enumerate(tensors):
            self.register_buffer(f"t{i}", t, persistent=False)
        self.count = len(tensors)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gm(*(getattr(self, f"t{i}") for i in range(self.count)), tokens)

    @property
    def num_params(self) -> int:
        return int(getattr(self, "_num_params", 0))


def _decode(value, nodes: dict, device: torch.device):
    if isinstance(value, list):
        return [_decode(v, nodes, device) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if value not in ALLOWED_STRINGS:
            raise ArtifactError(
                f"the graph holds the string {value[:40]!r}, which no allowed operation takes"
            )
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, raw),) = value.items()
        try:
            if key == "node":
                return nodes[raw]
            if key == "float" and raw in ("inf", "-inf", "nan"):
                return float(raw)
            if key == "dtype":
                return _DTYPES[raw]
            if key == "device":
                if raw not in ("cpu", "cuda", "meta"):
                    raise KeyError(raw)
                return device
            if key == "layout":
                return _LAYOUTS[raw]
            if key == "memory_format":
                return _FORMATS[raw]
        except (KeyError, TypeError):
            pass
    raise ArtifactError(f"the graph holds a value the evaluator does not accept: {str(value)[:80]}")


def _resolve(target: str):
    if target in PY_OPS:
        return PY_OPS[target]
    if target not in ALLOWED_OPS:
        raise ArtifactError(f"the model uses {target}, which the evaluator does not run")
    _, op, overload = target.split(".")
    return getattr(getattr(torch.ops.aten, op), overload)


def load(graph_blob: bytes, weights_blob: bytes | None, device: str | torch.device = "cpu") -> ScoredModel:
    """Rebuild the scored model on `device`; anything but allow-listed ops and plain values is refused.

    With `weights_blob` None the graph alone is checked (its weights become meta tensors)."""
    device = torch.device(device)
    index, constants = _unpack(graph_blob, "graph")
    weights = _unpack(weights_blob, "weights")[1] if weights_blob is not None else None
    try:
        inputs, body, out = index["inputs"], index["nodes"], index["output"]
        batch, seq_len = index["batch"], int(index["seq_len"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError("the graph's index is malformed") from None
    if batch != "dynamic" and not (isinstance(batch, int) and 1 <= batch <= MAX_BATCH):
        raise ArtifactError(f"the graph's batch size {batch!r} is not valid")
    graph = torch.fx.Graph()
    nodes: dict[str, torch.fx.Node] = {}
    tensors: list[torch.Tensor] = []
    token_input = None
    num_params = 0
    for i, entry in enumerate(inputs if isinstance(inputs, list) else []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ArtifactError("the graph's inputs are malformed")
        kind, target = entry.get("kind"), entry.get("target")
        placeholder = graph.placeholder(f"in{i}")
        nodes[entry["name"]] = placeholder
        if kind == "tokens":
            if token_input is not None:
                raise ArtifactError("the graph takes more than one token input")
            token_input = placeholder
            continue
        if weights is None and kind in ("parameter", "buffer"):
            shape = entry.get("shape")
            if (
                entry.get("dtype") not in _DTYPES
                or not isinstance(shape, list)
                or not all(isinstance(v, int) for v in shape)
            ):
                raise ArtifactError(f"the graph describes its input {target!r} badly")
            tensors.append(torch.empty(shape, dtype=_DTYPES[entry["dtype"]], device="meta"))
            continue
        source = weights if kind in ("parameter", "buffer") else constants if kind == "constant" else None
        if source is None or target not in source:
            raise ArtifactError(f"the handed-over tensors lack {target!r} ({kind}) that the graph reads")
        tensor = source[target]
        want = entry.get("shape")
        if _dtype_name(tensor.dtype) != entry.get("dtype") or (
            isinstance(want, list) and list(tensor.shape) != [s for s in want]
        ):
            raise ArtifactError(
                f"{target!r} was handed over as {tensor.dtype} {tuple(tensor.shape)}, "
                f"but the graph reads {entry.get('dtype')} {tuple(want or ())}"
            )
        if kind == "parameter":
            num_params += tensor.numel()
        tensors.append(tensor.to(device))
    if token_input is None:
        raise ArtifactError("the graph takes no token input")
    if weights is not None and set(weights) - {e.get("target") for e in inputs if isinstance(e, dict)}:
        raise ArtifactError("the handed-over weights hold tensors the graph does not read")
    # the token input must come last, after the tensors: ScoredModel passes them in that order
    order = [n for n in graph.nodes if n.op == "placeholder"]
    if order[-1] is not token_input:
        raise ArtifactError("the token input must be the graph's last input")
    for entry in body if isinstance(body, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or entry["name"] in nodes:
            raise ArtifactError("the graph's nodes are malformed")
        fn = _resolve(str(entry.get("target")))
        if fn is torch.ops.aten._assert_tensor_metadata.default:
            continue  # a dtype check from the trace: the evaluator's autocast changes dtypes on purpose
        args = _decode(entry.get("args", []), nodes, device)
        kwargs = entry.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ArtifactError("the graph's nodes are malformed")
        kwargs = {str(k): _decode(v, nodes, device) for k, v in kwargs.items()}
        if fn is torch.ops.aten.dropout.default and (len(args) < 3 or args[2] is not False):
            raise ArtifactError("the scored model uses dropout in training mode (random)")
        nodes[entry["name"]] = graph.call_function(fn, tuple(args), kwargs)
    graph.output(_decode(out, nodes, device))
    try:
        graph.lint()
        gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    except Exception as exc:
        raise ArtifactError(f"the graph is not well formed: {exc}") from None
    model = ScoredModel(gm, tensors, batch, seq_len)
    model._num_params = num_params
    model.traced_on = str(index.get("device", "cpu"))
    return model
