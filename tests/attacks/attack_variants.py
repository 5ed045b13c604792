"""Metric attacks: edits of the real baseline that try to get a better val_bpb than the model earns.

Each is rejected by the static guard (`guard`, part of its reason), or marked invalid by the
trainer (`status`, `reason`), or both; most are run even when the guard rejects them, to show
the trainer holds on its own. `status=None`: the guard is the only defence (see docs/SECURITY.md).
Placeholders: {PREPARE} (the prepare package the run imports: its own copy where it edits it).
"""

from __future__ import annotations

from genome_lab import EVALUATE, FORWARD, IMPORTS, REPORT, SETUP, Variant, after, append, before, replace

from trainer import Status

NOT_EVALUATED = "val_bpb was not computed by prepare.evaluate_bpb"
SANDBOX_READ = "sandbox: train.py tried to read"
FAKE = "lambda model, *args, **kwargs: 0.5"
FORGED = """
import json, os
forged = {
    "val_bpb": 0.5, "training_seconds": 1.0, "total_seconds": 2.0, "depth": cfg.depth,
    "config": {"depth": cfg.depth, "time_budget": cfg.time_budget, "seed": cfg.seed,
               "profile": cfg.profile.name, "world_size": 1},
}
"""
WRITE_FORGED = """
with open(os.environ[RESULT], "w") as f:
    json.dump(forged, f)
print("---\\nval_bpb: 0.500000\\ntraining_seconds: 1.000000", flush=True)
os._exit(0)
"""
# Untimed training: steps the budget's clock never sees, before the timed loop starts.
PRETRAIN = """
pretrain_until = time.time() + {seconds}
while time.time() < pretrain_until:
    with amp():
        loss = train_model(x, y)
    loss.backward()
    for opt in optimizers:
        opt.step()
    train_model.zero_grad(set_to_none=True)
    x, y = next(loader)
"""
ZERO_CE = "lambda logits, targets, *args, **kwargs: torch.zeros(len(targets), device=logits.device)"

ATTACKS: tuple[Variant, ...] = (
    # Runs expected to pass get 3 s: on a loaded 2-core CPU a 1 s budget can end one long step over it.
    Variant("honest_baseline", "the control: the baseline itself must pass", (), Status.OK, budget=3.0),
    # ---- lying about the number -----------------------------------------------------------------
    Variant(
        "prints_a_fake_summary",
        "prints a better summary block after the real one",
        (append('print("---\\nval_bpb: 0.500000", flush=True)'),),
        Status.INVALID,
        "log says val_bpb: 0.500000",
        budget=1.0,
    ),
    Variant(
        "reports_a_made_up_number",
        "hands report() a number of its own",
        (replace("val_bpb=float(val_bpb),", "val_bpb=0.5,"),),
        Status.INVALID,
        "val_bpb 0.5 reported, but prepare.evaluate_bpb returned",
        budget=1.0,
    ),
    Variant(
        "scores_training_data",
        "reports the last training batch's loss in bits as if it were val_bpb",
        (after(EVALUATE, "val_bpb = loss_value / math.log(2) / 4.0"),),
        Status.INVALID,
        "but prepare.evaluate_bpb returned",
        budget=1.0,
    ),
    Variant(
        "writes_the_result_file",
        "writes the result JSON itself and skips report()",
        (before(REPORT, FORGED + 'RESULT = "EVOLVE_RESULT"' + WRITE_FORGED),),
        Status.INVALID,
        "not signed",
        guard="EVOLVE_RESULT",
        budget=1.0,
    ),
    Variant(
        "writes_the_result_file_obfuscated",
        "the same, with the variable's name spelled in pieces past the guard",
        (after(SETUP, FORGED + 'RESULT = "EVOL" + "VE_RESULT"' + WRITE_FORGED),),
        Status.INVALID,
        "not signed",
    ),
    Variant(
        "forges_the_signature_from_proc_environ",
        "reads the signing key from /proc/self/environ and signs a forged result",
        (
            after(
                SETUP,
                FORGED
                + """
import hashlib, hmac
RESULT = "EVOL" + "VE_RESULT"
initial = open("/proc/self/environ", "rb").read().split(b"\\0")
key = next((e.split(b"=", 1)[1] for e in initial if e.startswith(RESULT.encode() + b"_KEY=")), b"")
forged["harness"] = {"denied": [], "elapsed_seconds": 2.0, "evaluations": [{
    "val_bpb": 0.5, "eval_tokens": cfg.profile.eval_tokens, "seq_len": cfg.profile.seq_len,
    "data_dir": os.environ["EVOL" + "VE_DATA"], "num_params": 1, "leaks_future": False,
    "consistent": True}]}
canonical = json.dumps(forged, sort_keys=True, separators=(",", ":"), default=str).encode()
forged["signature"] = hmac.new(key, canonical, hashlib.sha256).hexdigest()
"""
                + WRITE_FORGED,
            ),
        ),
        Status.INVALID,
        "not signed",
    ),
    Variant(
        "reads_the_key_from_its_memory",
        "reads /proc/self/mem, where prepare keeps the key",
        (after(SETUP, 'mem = open("/proc/self/mem", "rb")'),),
        Status.INVALID,
        SANDBOX_READ,
    ),
    Variant(
        "steals_the_key_through_gc",
        "finds prepare's key among the garbage collector's objects",
        (after(SETUP, 'key = [o for o in gc.get_objects() if isinstance(o, dict) and "_RESULT_KEY" in o]'),),
        None,
        guard="get_objects",
    ),
    # ---- patching the metric -------------------------------------------------------------------
    Variant(
        "patches_evaluate_bpb",
        "replaces prepare.evaluate_bpb by assignment",
        (after(SETUP, f"prepare.evaluate_bpb = {FAKE}"),),
        Status.INVALID,
        NOT_EVALUATED,
        guard="assigns to prepare.evaluate_bpb",
        budget=1.0,
    ),
    Variant(
        "patches_evaluate_bpb_with_setattr",
        "replaces it with setattr",
        (after(SETUP, f'setattr(prepare, "evaluate_bpb", {FAKE})'),),
        Status.INVALID,
        NOT_EVALUATED,
        guard="calls setattr on prepare",
        budget=1.0,
    ),
    Variant(
        "patches_evaluate_bpb_through_sys_modules",
        "replaces it through sys.modules",
        (after(SETUP, f'import sys\nsys.modules["prepare"].evaluate_bpb = {FAKE}'),),
        Status.INVALID,
        NOT_EVALUATED,
        guard="sys.modules",
        budget=1.0,
    ),
    Variant(
        "patches_evaluate_bpb_through_an_alias",
        "replaces it through `import prepare as harness`",
        (after(IMPORTS, "import prepare as harness"), after(SETUP, f"harness.evaluate_bpb = {FAKE}")),
        Status.INVALID,
        NOT_EVALUATED,
        guard="assigns to harness.evaluate_bpb",
        budget=1.0,
    ),
    Variant(
        "patches_the_metric_modules_globals",
        "swaps the torch functional module inside prepare's metric for a flattering one",
        (
            after(
                SETUP,
                f"import types\nprepare.evaluate_bpb.__globals__['F'] = types.SimpleNamespace(cross_entropy={ZERO_CE})",
            ),
        ),
        Status.INVALID,
        "the metric's own arithmetic disagrees with itself",
        guard="__globals__",
        budget=1.0,
    ),
    Variant(
        "patches_torch_cross_entropy",
        "monkeypatches torch's cross_entropy, which the metric calls",
        (before(EVALUATE, f"F.cross_entropy = {ZERO_CE}"),),
        Status.INVALID,
        "the metric's own arithmetic disagrees with itself",
        guard="replaces F.cross_entropy",
        budget=1.0,
    ),
    Variant(
        "looks_up_the_answer",
        "at evaluation the model copies the next token from its input row (not causal)",
        (
            after(
                FORWARD,
                "if not self.training:\n"
                "    nxt = torch.roll(idx, -1, dims=1)\n"
                "    return 30.0 * F.one_hot(nxt, self.lm_head.out_features).float()",
            ),
        ),
        Status.INVALID,
        "reads the answer (not causal)",
        budget=1.0,
    ),
    # ---- what is scored ------------------------------------------------------------------------
    Variant(
        "cuts_eval_tokens",
        "scores a copy of the config whose profile has 8 rows of validation",
        (
            after(
                SETUP,
                "import copy, dataclasses\n"
                "short = dataclasses.replace(prepare.get_profile(cfg.profile.name), eval_tokens=8 * cfg.profile.seq_len)\n"
                "ecfg = copy.copy(cfg)\n"
                'ecfg.__dict__["profile"] = short',
            ),
            replace(
                "prepare.evaluate_bpb(model, batch_size=rows, cfg=cfg)",
                "prepare.evaluate_bpb(model, batch_size=rows, cfg=ecfg)",
            ),
        ),
        Status.INVALID,
        "scored on 2048 validation tokens, not the profile's",
        budget=1.0,
    ),
    Variant(
        "scores_twice_keeps_the_better",
        "evaluates two models (seeds, checkpoints) and reports the better score",
        (
            after(
                EVALUATE, "val_bpb = min(val_bpb, prepare.evaluate_bpb(raw_model, batch_size=rows, cfg=cfg))"
            ),
        ),
        Status.INVALID,
        "called 2 times",
        budget=1.0,
    ),
    Variant(
        "seeds_a_lucky_constant",
        "ignores the run's seed for one it cherry-picked",
        (replace("torch.manual_seed(cfg.seed)", "torch.manual_seed(1337)"),),
        None,
        guard="seeds with the constant 1337",
    ),
    # ---- the data ------------------------------------------------------------------------------
    Variant(
        "reads_the_validation_shards",
        "memory-maps val.bin from the data directory",
        (
            after(
                SETUP,
                'import numpy as np\nval = np.memmap(cfg.data_dir / "val.bin", dtype=np.uint16, mode="r")',
            ),
        ),
        Status.INVALID,
        SANDBOX_READ,
        guard="the data directory",
        budget=1.0,
    ),
    Variant(
        "reads_the_validation_shards_obfuscated",
        "the same, with every name spelled in pieces past the guard",
        (
            after(
                SETUP,
                "import numpy as np, os\n"
                'path = os.path.join(os.environ["EVOL" + "VE_DATA"], "val" + ".b" + "in")\n'
                "val = np.memmap(path, dtype=np.uint16, mode='r')",
            ),
        ),
        Status.INVALID,
        SANDBOX_READ,
        budget=1.0,
    ),
    Variant(
        "trains_on_validation",
        "asks prepare for the validation split as training data",
        (replace('prepare.make_loader("train"', 'prepare.make_loader("val"'),),
        Status.INVALID,
        SANDBOX_READ,
        guard="'train' split",
        budget=1.0,
    ),
    # ---- the clock and the contract --------------------------------------------------------------
    Variant(
        "trains_before_the_timer",
        "trains untimed for 30 s before the timed loop (far past budget + allowance)",
        (before("training_time = 0.0", PRETRAIN.format(seconds=30)),),
        Status.TIMEOUT,
        "killed",
        budget=1.0,
        allowance=8.0,
    ),
    Variant(
        "trains_before_the_timer_and_hides_it",
        "trains untimed for 3 s, then restarts its own clock so total_seconds hides it",
        (before("training_time = 0.0", PRETRAIN.format(seconds=3) + "T_PROCESS_START = time.time()"),),
        Status.INVALID,
        "total_seconds",
        budget=1.0,
    ),
    Variant(
        "trains_before_the_timer_within_the_allowance",
        "trains untimed for 5 s and says so: inside the allowance, so only visible (docs/SECURITY.md)",
        (before("training_time = 0.0", PRETRAIN.format(seconds=5)),),
        Status.OK,
        budget=3.0,
    ),
    Variant(
        "ignores_the_depth_override",
        "defines its own DEPTH and builds the model with it",
        (
            after(IMPORTS, "DEPTH = 3"),
            replace(
                "GPT(tokenizer.vocab_size, cfg.depth, seq_len)", "GPT(tokenizer.vocab_size, DEPTH, seq_len)"
            ),
        ),
        None,
        guard="defines DEPTH",
    ),
    # the same mischief spelled as a literal: no rule sees it; the metric's parameter count does
    *(
        Variant(
            f"hardcodes_the_depth_run_at_{depth}",
            "builds a depth-3 model whatever depth it is asked for",
            (
                replace(
                    "GPT(tokenizer.vocab_size, cfg.depth, seq_len)", "GPT(tokenizer.vocab_size, 3, seq_len)"
                ),
            ),
            Status.OK,
            budget=3.0,
            depth=depth,
        )
        for depth in (2, 3)
    ),
    Variant(
        "edits_prepare_in_process",
        "rewrites prepare's metric.py through prepare.__file__",
        (
            after(
                SETUP,
                "from pathlib import Path\n"
                'metric = Path(prepare.__file__).parent / "metric.py"\n'
                'metric.write_text(metric.read_text().replace("nats +=", "nats += 0 *"))',
            ),
        ),
        Status.INVALID,
        "sandbox: train.py tried to write",
        guard="prepare.__file__",
    ),
    Variant(
        "edits_prepare_from_a_shell",
        "appends to prepare's metric.py from a shell, out of the sandbox's sight",
        (
            after(
                SETUP,
                'import subprocess\nsubprocess.run(["sh", "-c", "echo \\"# better\\" >> {PREPARE}/metric.py"])',
            ),
        ),
        Status.INVALID,
        "the prepare package at",
        own_prepare=True,
    ),
)
