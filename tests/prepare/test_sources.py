"""Local and builtin data sources: file types, deterministic disjoint splits, and bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prepare.errors import PrepareError
from prepare.sources import (
    BUILTIN_SPLIT,
    BUILTIN_VAL_MODULES,
    BUILTIN_VAL_PACKAGES,
    BuiltinSource,
    LocalSource,
    Source,
    chunk_text,
    doc_hash,
    get_source,
    held_out_paths,
)


def texts(n: int, tag: str = "doc") -> list[str]:
    return [f"{tag} {i}: a small document about topic {i * 7 % 13}.\n" for i in range(n)]


def write_mixed_corpus(root, n_each: int = 30) -> set[str]:
    """A directory (with a subdirectory) holding every supported file type; returns all texts."""
    (root / "sub").mkdir(parents=True)
    all_texts: set[str] = set()
    for i, t in enumerate(texts(n_each, "txt")):
        (root / f"t{i}.txt").write_text(t)
        all_texts.add(t)
    for i, t in enumerate(texts(n_each, "md")):
        (root / "sub" / f"m{i}.md").write_text(t)
        all_texts.add(t)
    lines = texts(n_each, "jsonl")
    (root / "sub" / "data.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "meta": 1}) for t in lines) + "\n"
    )
    all_texts.update(lines)
    rows = texts(n_each, "parquet")
    pq.write_table(pa.table({"text": rows}), root / "rows.parquet")
    all_texts.update(rows)
    (root / "ignored.csv").write_text("not,a,document\n")
    return all_texts


def both_splits(src: Source) -> tuple[list[str], list[str]]:
    src.fetch(None, 0)
    return list(src.documents("train")), list(src.documents("val"))


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    return root, write_mixed_corpus(root)


class TestEverySource:
    """The contract every source keeps (climbmix's is in test_download.py, behind a loopback hub)."""

    @pytest.fixture(params=["builtin", "local"])
    def source(self, request, corpus) -> Source:
        return BuiltinSource() if request.param == "builtin" else get_source(f"local:{corpus[0]}")

    def test_splits_are_disjoint_nonempty_and_deterministic(self, source):
        train, val = both_splits(source)
        assert train and val
        assert not {doc_hash(t) for t in train} & {doc_hash(t) for t in val}
        again_train, again_val = both_splits(source)
        assert (again_train, again_val) == (train, val)
        assert len(val) < len(train)

    def test_info_is_json_and_stable(self, source):
        info = source.info(1)
        assert json.loads(json.dumps(info)) == info == source.info(1)

    def test_unknown_split_is_refused(self, source):
        with pytest.raises(PrepareError, match="unknown split"):
            list(source.documents("test"))


def test_local_reads_every_file_type_as_documents(corpus):
    root, expected = corpus
    train, val = both_splits(get_source(f"local:{root}"))
    assert set(train) | set(val) == expected
    assert len(train) + len(val) == len(expected)


def test_local_glob_and_single_file(corpus):
    root, _ = corpus
    train, val = both_splits(get_source(f"local:{root}/sub/*.md"))
    assert len(train) + len(val) == 30 and all(t.startswith("md ") for t in train + val)
    train, val = both_splits(get_source(f"local:{root}/sub/data.jsonl"))
    assert len(train) + len(val) == 30 and all(t.startswith("jsonl ") for t in train + val)


def test_identical_documents_always_land_in_the_same_split(tmp_path):
    root = tmp_path / "dups"
    root.mkdir()
    for i, t in enumerate(texts(60)):
        for copy in range(3):  # the same text under three names
            (root / f"{copy}-{i}.txt").write_text(t)
    train, val = both_splits(LocalSource(str(root)))
    assert val and not set(train) & set(val)


def test_a_tiny_source_still_gets_one_validation_document(tmp_path):
    root = tmp_path / "two"
    root.mkdir()
    # find two texts that both hash into training, so the fallback is what puts one into val
    found = [t for t in texts(200) if doc_hash(t) % 10_000 >= 500][:2]
    for i, t in enumerate(found):
        (root / f"{i}.txt").write_text(t)
    train, val = both_splits(LocalSource(str(root)))
    assert len(train) == 1 and len(val) == 1


def test_builtin_is_offline_stdlib_text_and_big_enough_for_tiny():
    src = BuiltinSource()
    files = src.files()
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    train, val = both_splits(src)
    chars = sum(map(len, train))
    assert chars > 4_000_000  # the tiny profile trains its tokenizer on 2M characters
    assert any('"""' in t for t in train)  # docstrings are in there
    assert sum(map(len, val)) > 200_000  # tiny's validation needs ~33K tokens (160K at most)


def test_builtin_validation_is_the_held_out_modules_and_nothing_else():
    """The split is a rule by path: every validation document is a chunk of a held-out module, no
    training document is, and the rule is recorded (the manifest keeps `info`)."""
    src = BuiltinSource()
    held = set(held_out_paths(src.root))
    files = src.files()
    in_val = [f for f in files if src.is_validation(f)]
    assert in_val and [f for f in files if {f, *f.parents} & held] == in_val
    expected_val, train_chunks = [], set()
    for f in files:
        try:
            chunks = list(chunk_text(f.read_bytes().decode("utf-8"), src.DOCUMENT_CHARS))
        except UnicodeDecodeError:
            continue
        if src.is_validation(f):
            expected_val += chunks
        else:
            train_chunks.update(chunks)
    train, val = both_splits(src)
    assert val == expected_val  # the held-out modules, in the source's fixed order
    assert set(train) <= train_chunks and not set(train) & set(val)
    assert train_chunks - set(train) <= set(val)  # only a copy of a validation chunk is dropped
    assert src.info(1)["split"] == BUILTIN_SPLIT


def fake_stdlib(root):
    """A standard-library folder in miniature: os.py, a held-out package and module (with a
    compiled file and a stub), and modules that train."""
    (root / "idlelib" / "sub").mkdir(parents=True)
    (root / "json").mkdir()
    (root / "__pycache__").mkdir()
    (root / "os.py").write_text("# os\n" + "def osfunc():\n    return 1\n\n" * 40)
    (root / "json" / "__init__.py").write_text("# json\n" + "def load():\n    pass\n\n" * 40)
    (root / "idlelib" / "sub" / "editor.py").write_text("# editor\n" + "class Editor:\n    pass\n\n" * 40)
    (root / "turtle.py").write_text("# turtle\n" + "def forward(n):\n    pass\n\n" * 40)
    (root / "turtle.pyi").write_text("def forward(n: int) -> None: ...\n")
    (root / "__pycache__" / "turtle.cpython-311.pyc").write_bytes(b"pyc")
    (root / "__pycache__" / "json.cpython-311.pyc").write_bytes(b"pyc")
    return root


def test_held_out_paths_name_the_packages_modules_stubs_and_compiled_files(tmp_path):
    root = fake_stdlib(tmp_path)
    names = sorted(p.relative_to(root).as_posix() for p in held_out_paths(root))
    assert names == ["__pycache__/turtle.cpython-311.pyc", "idlelib", "turtle.py", "turtle.pyi"]
    assert {"idlelib", "tkinter", "lib2to3"} <= set(BUILTIN_VAL_PACKAGES) and "turtle" in BUILTIN_VAL_MODULES


def test_a_fake_stdlib_splits_by_path(tmp_path):
    src = BuiltinSource(fake_stdlib(tmp_path))
    train, val = both_splits(src)
    assert val and all(t.startswith(("# editor", "# turtle")) or "Editor" in t or "forward" in t for t in val)
    assert train and not any("Editor" in t or "forward" in t for t in train)


def test_a_stdlib_without_the_held_out_modules_is_a_one_line_error(tmp_path):
    (tmp_path / "os.py").write_text("x = 1\n")
    (tmp_path / "json.py").write_text("y = 2\n")
    with pytest.raises(PrepareError, match="has none of the modules the builtin source validates on") as err:
        BuiltinSource(tmp_path).fetch(None, 0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("local:/no/such/dir", "does not exist"),
        ("local:", "needs a path"),
        ("hf", "unknown source 'hf'"),
        ("", "unknown source"),
    ],
)
def test_bad_source_specs_are_one_line_errors(spec, message):
    with pytest.raises(PrepareError, match=message) as err:
        src = get_source(spec)
        src.fetch(None, 0)
    assert "\n" not in str(err.value)


def test_bare_path_suggests_local_prefix(tmp_path):
    with pytest.raises(PrepareError, match="did you mean local:"):
        get_source(str(tmp_path))


def test_directory_without_documents_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.csv").write_text("a,b\n")
    with pytest.raises(PrepareError, match="has no .txt/.md/.jsonl/.parquet files"):
        LocalSource(str(tmp_path / "d")).fetch(None, 0)


def test_only_blank_documents_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("   \n\n")
    (tmp_path / "d" / "b.md").write_text("")
    with pytest.raises(PrepareError, match="only empty documents"):
        LocalSource(str(tmp_path / "d")).fetch(None, 0)


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(PrepareError, match="x.jsonl line 2"):
        LocalSource(str(path)).fetch(None, 0)


def test_corrupt_parquet_is_a_prepare_error(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": texts(50)}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # cut in half
    with pytest.raises(PrepareError, match="bad.parquet is not a readable parquet file") as err:
        LocalSource(str(tmp_path)).fetch(None, 0)
    assert "\n" not in str(err.value)


def test_parquet_without_text_column_is_a_prepare_error(tmp_path):
    pq.write_table(pa.table({"body": texts(5)}), tmp_path / "a.parquet")
    with pytest.raises(PrepareError, match="no 'text' column"):
        LocalSource(str(tmp_path)).fetch(None, 0)


def test_local_train_and_val_folders_are_an_explicit_split(tmp_path):
    for split, names in (("train", ["a", "b", "c"]), ("val", ["v"])):
        (tmp_path / split).mkdir()
        for name in names:
            (tmp_path / split / f"{name}.txt").write_text(f"{split} document {name}\n")
    source = LocalSource(str(tmp_path))
    source.fetch(tmp_path / "raw", 0)
    assert source.explicit_split
    assert sorted(source.documents("train")) == [f"train document {n}\n" for n in "abc"]
    assert list(source.documents("val")) == ["val document v\n"]


def test_explicit_split_with_an_empty_val_folder_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    (tmp_path / "train" / "a.txt").write_text("text\n")
    with pytest.raises(PrepareError, match=r"/val has no"):
        LocalSource(str(tmp_path)).fetch(tmp_path / "raw", 0)
