"""Lay out the offline English corpus (../shared/data) as a local source with an explicit split.

The corpus ships as a few gzip files of whole books concatenated. A book is far longer than a
training row, and BOS-aligned packing crops what does not fit, so books are cut into documents of
about `--chars` characters at paragraph boundaries. The split follows the corpus README: the
validation books plus the last 10% of tinyshakespeare are validation, everything else training.

    python bench/shared_corpus.py ../shared/data /tmp/corpus
    evolve prepare --profile h100 --source local:/tmp/corpus
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

from prepare.sources import chunk_text


def lay_out(data: Path, out: Path, chars: int = 2000) -> dict[str, int]:
    """Write `data`'s books as `out/train/*.txt` and `out/val/*.txt` documents; the counts."""
    texts: dict[str, str] = {}
    counts = {"train": 0, "val": 0}
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)

    def write(split: str, stem: str, text: str) -> None:
        for i, doc in enumerate(chunk_text(text, chars)):
            (out / split / f"{stem}-{i:04d}.txt").write_text(doc, encoding="utf-8")
            counts[split] += 1

    with open(data / "gutenberg_manifest.tsv", newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            name = row["file"]
            if name not in texts:
                texts[name] = gzip.open(data / name, "rt", encoding="utf-8").read()
            start, n = int(row["char_offset"]), int(row["chars"])
            split = "val" if "_val" in name else "train"
            write(split, f"book{number:03d}", texts[name][start : start + n])
    shakespeare = gzip.open(data / "tinyshakespeare.txt.gz", "rt", encoding="utf-8").read()
    cut = int(len(shakespeare) * 0.9)
    write("train", "shakespeare", shakespeare[:cut])
    write("val", "shakespeare", shakespeare[cut:])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="the shared data folder (with gutenberg_manifest.tsv)")
    ap.add_argument("out", type=Path, help="output folder; gets train/ and val/ subfolders")
    ap.add_argument("--chars", type=int, default=2000, help="target characters per document")
    args = ap.parse_args()
    counts = lay_out(args.data, args.out, args.chars)
    print(f"{counts['train']} training and {counts['val']} validation documents in {args.out}")


if __name__ == "__main__":
    main()
