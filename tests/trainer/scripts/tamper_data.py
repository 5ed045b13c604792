"""Looks for the validation shard where the prepared data lives and rewrites its timestamp from a
shell: inside the sandbox the data folder holds only the tokenizer and the manifest."""

import subprocess

import prepare

cfg = prepare.run_config()
print(sorted(p.name for p in cfg.data_dir.iterdir()), flush=True)
subprocess.run(["touch", "-d", "@0", str(cfg.data_dir / "val.bin")], check=True)
