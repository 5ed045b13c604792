"""The evaluator: scores a handed-over model in a process the training run never touched.

    python -c "import prepare.evaluate as e; e.main()" --graph G --weights W --data DIR \\
        --seq-len T --eval-tokens N --device cpu|cuda --result-fd FD [--wait]

The trainer starts it (in a sandbox of its own that sees the validation split, the artifact and
the device, and nothing of the training run's) when the run starts, so importing torch overlaps
the training run's own start-up. With `--wait` it then waits for a line `graph` on stdin (the
graph has arrived) and checks the graph while the run trains, then for a line `go` (the weights
are there and the training process is stopped), loads the weights, scores the model with
`prepare.metric.evaluate_bpb` and writes one JSON object to the result descriptor:
`{"status": "ok", "val_bpb": ..., ...}`, or `{"status": "invalid" | "crash" | "oom", "reason": ...}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _write(fd: int, document: dict) -> None:
    data = json.dumps(document).encode()
    with os.fdopen(fd, "wb", closefd=True) as out:
        out.write(data)


def _run(args) -> dict:
    import torch

    from .artifact import ArtifactError, load
    from .metric import evaluate_bpb

    if args.wait and sys.stdin.readline().strip() != "graph":
        return {"status": "aborted", "reason": "the trainer called the evaluation off"}
    started = time.monotonic()
    with open(args.graph, "rb") as f:
        graph = f.read()
    try:
        load(graph, None, "meta")  # the graph alone: allow-listed ops, plain values
    except ArtifactError as exc:
        return {"status": "invalid", "reason": str(exc)}
    except Exception as exc:  # the checked graph does not build: the model's, not ours
        return {
            "status": "invalid",
            "reason": f"the handed-over graph does not build: {type(exc).__name__}: {exc}"[:400],
        }
    if args.wait:
        line = sys.stdin.readline()
        if line.strip() != "go":
            return {"status": "aborted", "reason": "the trainer called the evaluation off"}
    traced = load(graph, None, "meta").traced_on
    cuda = args.device == "cuda" and torch.cuda.is_available()  # (a GPU run faked on a CPU host: its CPU)
    if cuda and traced != "cuda":  # the scoring device and precision are the harness's, not the graph's
        return {
            "status": "invalid",
            "reason": f"the model was traced on {traced}, but the run trains on cuda: it is scored where it "
            f"trains (trace it after moving it to the GPU)",
        }
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    waited = time.monotonic()
    try:
        with open(args.weights, "rb") as f:
            weights = f.read()
    except OSError:
        return {"status": "invalid", "reason": "the run ended without handing over its weights"}
    try:
        model = load(graph, weights, device)
    except ArtifactError as exc:
        return {"status": "invalid", "reason": str(exc)}
    del weights
    static = None if model.batch == "dynamic" else int(model.batch)
    if model.seq_len != args.seq_len:
        return {
            "status": "invalid",
            "reason": f"the graph was traced for rows of {model.seq_len} tokens, not {args.seq_len}",
        }
    try:
        score = evaluate_bpb(
            model, args.data, args.seq_len, args.eval_tokens,
            device=device, static_batch=static, batch_size=args.batch_size,
        )  # fmt: skip
    except torch.OutOfMemoryError as exc:
        return {"status": "oom", "reason": f"out of memory while scoring: {str(exc)[:200]}"}
    except Exception as exc:  # the model's graph failed on real rows (shapes, indices, ...)
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        return {
            "status": "crash",
            "reason": f"the model failed while being scored: {type(exc).__name__}: {text}",
        }
    return {
        "status": "ok",
        **score.to_dict(),
        "num_params": model.num_params,
        "load_seconds": waited - started,
        "score_seconds": time.monotonic() - waited,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prepare.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--graph", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--eval-tokens", type=int, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args(argv)
    try:
        document = _run(args)
    except Exception as exc:  # a bug of ours or of the installation: say so, never a bare traceback
        document = {"status": "crash", "reason": f"the evaluator failed: {type(exc).__name__}: {exc}"[:500]}
    _write(args.result_fd, document)
