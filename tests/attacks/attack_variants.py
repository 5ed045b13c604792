"""Metric attacks: edits of the real baseline that try to get a better val_bpb than the model earns.

Each is rejected by the static guard (`guard`, part of its reason), judged by the trainer
(`status`, `reason`), or both; most are run even when the guard rejects them, to show that the
harness holds on its own. With a token budget a run's score depends on its code and seed alone,
so an attack that the OS makes impossible shows as a run that passes with exactly the honest
baseline's score (`same_as_honest`): whatever it tried changed nothing. Placeholders: {STORE} (the
workspace's .evolve), {DATA} (the prepared data), {PREPARE} (the prepare package the run imports).
"""

from __future__ import annotations

from genome_lab import (
    FORWARD,
    IMPORTS,
    LOOP,
    REPORT,
    SETUP,
    STEP_END,
    Variant,
    after,
    append,
    before,
    replace,
)

from trainer import Status

SANDBOX_READ = "sandbox: train.py tried to read"
SANDBOX_WRITE = "sandbox: train.py tried to write"
NOT_CAUSAL = "reads the answer (not causal"
# Tries something, and prints what came of it instead of failing: the run goes on, and its score
# shows whether the attempt changed anything.
TRY = """
try:
{body}
    print("ATTACK: it worked", flush=True)
except Exception as exc:
    print(f"ATTACK: refused ({{type(exc).__name__}}: {{exc}})", flush=True)
"""


def attempt(code: str) -> str:
    return TRY.format(body="\n".join("    " + line for line in code.strip().splitlines()))


ATTACKS: tuple[Variant, ...] = (
    Variant("honest_baseline", "the control: the baseline itself must pass", (), Status.OK),
    # ---- lying about the number: train.py reports nothing that counts --------------------------
    Variant(
        "prints_a_fake_summary",
        "prints a better summary block after the real one",
        (append('print("---\\nval_bpb: 0.500000\\ntraining_seconds: 1.0", flush=True)'),),
        Status.OK,
        same_as_honest=True,
    ),
    Variant(
        "reports_a_made_up_number",
        "hands report() a val_bpb and a step count of its own",
        (replace("    num_steps=step,", "    num_steps=10**6,\n    val_bpb=0.5,"),),
        Status.OK,
        same_as_honest=True,
    ),
    # ---- reaching into prepare: nothing in the training process decides the score --------------
    Variant(
        "patches_evaluate_bpb",
        "replaces prepare.evaluate_bpb (the evaluator runs in another process)",
        (after(SETUP, "prepare.evaluate_bpb = lambda *a, **k: 0.5"),),
        Status.OK,
        guard="assigns to prepare.evaluate_bpb",
        same_as_honest=True,
    ),
    Variant(
        "patches_the_metric_through_sys_modules",
        "reaches prepare.metric through getattr(sys, 'modules') and swaps its math module",
        (
            after(
                SETUP,
                attempt(
                    "import sys, types\n"
                    'metric = getattr(sys, "modules")["prep" + "are.metric"]\n'
                    "metric.math = types.SimpleNamespace(log=lambda x: 1e9)"
                ),
            ),
        ),
        Status.OK,
        same_as_honest=True,
    ),
    Variant(
        "reads_the_scored_rows_through_inspect",
        "finds prepare.metric with inspect.getmodule and asks it for the validation rows",
        (
            after(
                SETUP,
                attempt(
                    "import importlib, inspect\n"
                    'metric = inspect.getmodule(importlib.import_module("prep" + "are.metric").Score)\n'
                    "rows = metric.validation_rows(cfg.__dict__['data_dir'], cfg.profile.seq_len, cfg.profile.eval_tokens)"
                ),
            ),
        ),
        Status.INVALID,
        SANDBOX_READ,
        guard="imports a module by name",
    ),
    Variant(
        "switches_the_tripwire_off",
        "empties the audit hook's policy through its own state, then writes to the store",
        (
            after(
                SETUP,
                attempt(
                    "import sys\n"
                    'box = getattr(sys, "modules")["prep" + "are.sandbox"]\n'
                    "hook = box._ACTIVE\n"
                    'hook.policy = box.Policy(writable=("/",), readable=("/",))\n'
                    'open("{STORE}/evolve.db", "ab").write(b"fake ok evaluations")'
                ),
            ),
        ),
        Status.OK,
        same_as_honest=True,  # the hook is off, and the store is still not there to write
    ),
    Variant(
        "writes_fake_evaluations_into_the_store",
        "opens ../../evolve.db with sqlite3 and inserts an ok evaluation",
        (
            after(
                SETUP,
                'import sqlite3\ndb = sqlite3.connect("../../evolve.db")\ndb.execute("CREATE TABLE x (y)")',
            ),
        ),
        Status.INVALID,
        SANDBOX_WRITE,
    ),
    # ---- the data: none of it is in the training process's file system -------------------------
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
    ),
    Variant(
        "reads_the_validation_shards_with_dir_fd",
        "os.open(..., dir_fd=...) on the host's data folder, past the old tripwire's path resolution",
        (
            after(
                SETUP,
                attempt(
                    "import os\n"
                    'folder = os.open("{DATA}", os.O_RDONLY)\n'
                    'fd = os.open("val" + ".b" + "in", os.O_RDONLY, dir_fd=folder)'
                ),
            ),
        ),
        Status.INVALID,
        SANDBOX_READ,  # no such folder in the sandbox, and the tripwire knows whose it is
        guard="prepare's data files",
    ),
    Variant(
        "reads_the_validation_shards_as_the_metric",
        "compiles its reader with co_filename set to prepare/metric.py, the old exemption",
        (
            after(
                SETUP,
                attempt(
                    "import os\n"
                    'code = compile("data = open(path, \'rb\').read()", "{PREPARE}/metric.py", "exec")\n'
                    'scope = {"path": os.path.join(os.environ["EVOL" + "VE_DATA"], "val" + ".b" + "in")}\n'
                    "exec(code, scope)"
                ),
            ),
        ),
        Status.INVALID,
        SANDBOX_READ,
        guard="exec",
    ),
    Variant(
        "reads_the_training_shards_to_train_before_the_clock",
        "reads train.bin itself to train before the window opens",
        (after(SETUP, 'raw = open(str(cfg.data_dir) + "/tr" + "ain.b" + "in", "rb").read()'),),
        Status.INVALID,
        SANDBOX_READ,
        guard="reads .data_dir",
    ),
    # ---- the clock: the harness serves the data and ends it -----------------------------------
    Variant(
        "trains_on_many_warmup_batches",
        "takes 45 optimizer steps on the warm-up batches before the window (untimed_steps 2 -> 45)",
        (
            replace(
                "for x, y in loader.warmup(steps=2 if cuda else 1):", "for x, y in loader.warmup(steps=45):"
            ),
            after(
                "        train_model(x, y).backward()",
                "for opt in optimizers:\n    opt.step()\ntrain_model.zero_grad(set_to_none=True)",
            ),
        ),
        Status.OK,
        worse_than_honest=True,  # the warm-up batches are random tokens: nothing to learn from them
    ),
    Variant(
        "keeps_training_after_the_budget",
        "keeps the batches it was served and trains on them again for 20 s after the data ended",
        (
            after(LOOP, "kept = locals().setdefault('kept', [])\nkept.append((x, y))"),
            before(
                REPORT,
                "import time\nend = time.time() + 20\nwhile time.time() < end:\n"
                "    for x, y in kept:\n        with amp():\n            train_model(x, y).backward()\n"
                "        for opt in optimizers:\n            opt.step()\n        train_model.zero_grad(set_to_none=True)",
            ),
        ),
        Status.OK,
        same_as_honest=True,  # the weights were handed over when the data ended
    ),
    Variant(
        "hoards_batches_and_trains_past_the_end",
        "stops asking for data after a few steps and trains on what it holds until well after the budget",
        (
            before(
                LOOP,
                "kept = [next(iter(loader)) for _ in range(2)]\nimport time\nt = time.time()\n"
                "while time.time() - t < 40:\n    for x, y in kept:\n        with amp():\n"
                "            train_model(x, y).backward()\n        for opt in optimizers:\n"
                "            opt.step()\n        train_model.zero_grad(set_to_none=True)",
            ),
        ),
        Status.INVALID,
        "training after the budget does not count",
        budget=2.0,
        budget_unit="seconds",
    ),
    # ---- the model: a pure graph of allow-listed ops, probed for reading later tokens ----------
    Variant(
        "looks_up_the_answer",
        "in eval mode the model copies the next token from its input row (not causal)",
        (
            after(
                FORWARD,
                "if not self.training:\n"
                "    nxt = torch.roll(idx, -1, dims=1)\n"
                "    return 30.0 * F.one_hot(nxt, self.lm_head.out_features).float()",
            ),
        ),
        Status.INVALID,
        NOT_CAUSAL,
    ),
    Variant(
        "peeks_where_the_old_probe_did_not_look",
        "reads the next token only in the second half of each row",
        (
            after(
                "        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)",
                "if not self.training:\n"
                "    half = idx.size(1) // 2\n"
                "    peek = 30.0 * F.one_hot(torch.roll(idx, -1, dims=1), logits.size(-1)).float()\n"
                "    logits = logits + peek * (torch.arange(idx.size(1), device=idx.device) >= half)[None, :, None]",
            ),
        ),
        Status.INVALID,
        NOT_CAUSAL,
    ),
    Variant(
        "answers_the_probe_from_a_cache",
        "remembers the logits of the row it scored last in a buffer, to hand a probe the same answer",
        (
            after(
                '        self.register_buffer("sin", angles.sin(), persistent=False)',
                'self.register_buffer("memo", torch.zeros(1), persistent=False)',
            ),
            after(
                "        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)",
                "if not self.training:\n    self.memo.add_(1.0)",
            ),
        ),
        Status.CRASH,
        "changes its own buffers",
    ),
    Variant(
        "draws_random_numbers_when_scored",
        "adds noise to its logits in eval mode, so that no probe sees the same model twice",
        (
            after(
                "        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)",
                "if not self.training:\n    logits = logits + 1e-3 * torch.randn_like(logits)",
            ),
        ),
        Status.CRASH,
        "which the evaluator does not run",
    ),
    # ---- prepare and the environment: read-only ------------------------------------------------
    Variant(
        "forges_a_pyc_in_prepares_cache",
        "writes a .pyc of its own into prepare's __pycache__ for every later run to load",
        (
            after(
                SETUP,
                attempt(
                    "import os\n"
                    'os.makedirs("{PREPARE}/__pycache__", exist_ok=True)\n'
                    'with open(os.open("{PREPARE}/__pycache__/metric.cpython-311.pyc", os.O_WRONLY | os.O_CREAT), "wb") as f:\n'
                    '    f.write(b"forged")'
                ),
            ),
        ),
        Status.INVALID,
        SANDBOX_WRITE,
    ),
    Variant(
        "edits_prepare_from_a_shell",
        "appends to prepare's metric.py from a shell, out of the tripwire's sight",
        (
            after(
                SETUP,
                'import subprocess\nsubprocess.run(["sh", "-c", "echo \\"# better\\" >> {PREPARE}/metric.py"])',
            ),
        ),
        Status.OK,
        same_as_honest=True,  # a read-only file system
        own_prepare=True,
    ),
    Variant(
        "monkeypatches_torch_cross_entropy",
        "makes F.cross_entropy return zeros (it only breaks its own training)",
        (before(LOOP, "F.cross_entropy = lambda logits, targets, *a, **k: (logits * 0).sum()"),),
        Status.OK,
        guard="replaces F.cross_entropy",
        worse_than_honest=True,
    ),
    # ---- the contract ----------------------------------------------------------------------------
    Variant(
        "seeds_a_lucky_constant",
        "ignores the run's seed for one it cherry-picked",
        (replace("torch.manual_seed(cfg.seed)", "torch.manual_seed(1337)"),),
        None,
        guard="seeds with the constant 1337",
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
    # the same mischief spelled as a literal: no rule sees it; the scored model's size does
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
            depth=depth,
        )
        for depth in (2, 3)
    ),
    Variant(
        "trips_on_step_end",
        "the honest loop with a harmless edit at the step's end (the anchor is still there)",
        (after(STEP_END, "loss_value = float(loss_value)"),),
        Status.OK,
        same_as_honest=True,
    ),
)

# ---- the builtin source's validation text: the standard library's held-out modules ---------------
# {HELD_OUT} (tests/attacks/test_builtin_corpus.py): the held-out names, and the size and sha256
# (16 hex digits) of every file of the held-out modules of the standard library the data was
# prepared from. The attack switches the tripwire off first, so that only the OS stands.
SEARCH_THE_STDLIB = """
import hashlib, json, os, subprocess, sys, sysconfig
box = getattr(sys, "modules")["prep" + "are.sandbox"]
if box._ACTIVE is not None:
    box._ACTIVE.policy = box.Policy(writable=("/",), readable=("/",))
held = json.loads('{HELD_OUT}')
packages, modules = set(held["packages"]), set(held["modules"])
digests = {int(size): set(shas) for size, shas in held["sizes"].items()}
found = []
from prepare.sources import BuiltinSource
try:
    docs = list(BuiltinSource().documents("val"))
except Exception:
    docs = []
if docs:
    found.append(f"{len(docs)} validation documents by prepare's own rule")
std = sysconfig.get_paths()["stdlib"]
names = {std, os.path.realpath(std), sys.prefix, sys.base_prefix, *(p for p in sys.path if p.startswith("/"))}
roots = {via + p for via in ("/proc/self/root", "/proc/1/root") for p in (std, os.path.realpath(std))}
if os.path.isdir("/evolve"):  # the sandbox: all of it
    roots.add("/")
else:
    mounts = {line.split()[4] for line in open("/proc/self/mountinfo")}
    roots |= names | {m for m in mounts if m != "/" and not m.startswith(("/proc", "/sys", "/dev"))}
def readable(path):
    try:
        with open(path, "rb") as f:
            return len(f.read(4096)) > 0
    except OSError:
        return False
looked = 0
for root in sorted(roots):
    held_dirs = set()
    if os.path.isfile(root) and readable(root) and os.path.basename(root).split(".")[0] in modules:
        found.append(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == "/":
            dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
        parent = os.path.dirname(dirpath)
        stdlib = "os.py" in filenames or "os.pyi" in filenames
        cache_of_stdlib = os.path.basename(dirpath) == "__pycache__" and (
            os.path.exists(os.path.join(parent, "os.py")) or os.path.exists(os.path.join(parent, "os.pyi"))
        )
        if stdlib:
            held_dirs |= {os.path.join(dirpath, d) for d in dirnames if d in packages}
        in_held = any(dirpath == h or dirpath.startswith(h + "/") for h in held_dirs)
        for name in filenames:
            path = os.path.join(dirpath, name)
            looked += 1
            by_name = in_held or ((stdlib or cache_of_stdlib) and name.split(".")[0] in modules)
            if by_name and readable(path):
                found.append(path)
                continue
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size in digests and os.path.isfile(path):
                try:
                    with open(path, "rb") as f:
                        sha = hashlib.sha256(f.read()).hexdigest()[:16]
                except OSError:
                    continue
                if sha in digests[size]:
                    found.append(path + " (a copy)")
for probe in (f"umount {std}/idlelib && ls -A {std}/idlelib", f"mkdir -p /tmp/m && mount --bind {std} /tmp/m && ls -A /tmp/m/idlelib"):
    try:
        out = subprocess.run(["unshare", "-Urm", "sh", "-c", probe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    if out.strip():
        found.append(f"unshare -Urm: {probe}")
print(f"ATTACK: looked at {looked} files from {len(roots)} roots", flush=True)
if not found:
    raise FileNotFoundError(f"no validation text among {looked} files")
print(f"ATTACK: found {len(found)}: " + "; ".join(found[:5]), flush=True)
"""

CORPUS_ATTACKS: tuple[Variant, ...] = (
    ATTACKS[0],  # the honest baseline, for the score to compare with
    Variant(
        "searches_for_the_validation_source_files",
        "looks for the builtin source's validation text: prepare's own split rule, every name of the "
        "standard library (sys.path, sysconfig, the prefixes, /proc/self/root, /proc/1/root), every "
        "mount, the whole file system by name and by content, and a new user namespace to unmount",
        (after(SETUP, attempt(SEARCH_THE_STDLIB)),),
        Status.OK,
        same_as_honest=True,  # it finds nothing, so it trains as the baseline does
    ),
)
