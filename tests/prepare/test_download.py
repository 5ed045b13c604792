"""Downloading climbmix-style parquet shards from a loopback HTTP server: retries, truncation, resume."""

from __future__ import annotations

import io
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prepare.download import DownloadJob, download_all, download_file
from prepare.errors import PrepareError
from prepare.sources import CLIMBMIX_VAL_SHARD, ClimbMixSource, get_source, shard_name


def parquet_bytes(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), buf)
    return buf.getvalue()


class Hub:
    """A loopback HTTP server: `files` maps a URL path to its bytes, `plan` a path to the
    misbehaviours of its next requests ("500", "truncate", "garbage"), then it serves normally."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                with hub.lock:
                    hub.hits[self.path] += 1
                    steps = hub.plan.get(self.path) or []
                    step = steps.pop(0) if steps else "ok"
                body = hub.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                if step == "500":
                    self.send_error(500)
                    return
                if step == "garbage":  # right length, wrong content
                    body = b"x" * len(body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if step == "truncate":  # promise the whole file, send half, hang up
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub():
    h = Hub()
    train = [[f"train shard {i} document {j}: the quick brown fox." for j in range(20)] for i in range(3)]
    for i, texts in enumerate(train):
        h.files[f"/{shard_name(i)}"] = parquet_bytes(texts)
    h.files[f"/{shard_name(CLIMBMIX_VAL_SHARD)}"] = parquet_bytes(
        [f"validation document {j}" for j in range(10)]
    )
    yield h
    h.close()


def test_climbmix_downloads_real_parquet_shards_and_the_pinned_val_shard(hub, tmp_path):
    src = ClimbMixSource(base_url=hub.url, backoff=0.01)
    src.fetch(tmp_path / "raw", 2)
    names = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert names == ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    train = list(src.documents("train"))
    assert len(train) == 40 and train[0] == "train shard 0 document 0: the quick brown fox."
    assert list(src.documents("val")) == [f"validation document {j}" for j in range(10)]
    assert f"/{shard_name(2)}" not in hub.hits  # only --num-shards training shards are fetched


def test_second_fetch_downloads_nothing(hub, tmp_path):
    ClimbMixSource(base_url=hub.url, backoff=0.01).fetch(tmp_path, 2)
    before = sum(hub.hits.values())
    seen = []
    ClimbMixSource(base_url=hub.url, backoff=0.01).fetch(tmp_path, 2, progress=lambda *a: seen.append(a))
    assert sum(hub.hits.values()) == before
    assert seen == [("download", 3, 3)]
    # one more shard: only that one is fetched
    ClimbMixSource(base_url=hub.url, backoff=0.01).fetch(tmp_path, 3)
    assert sum(hub.hits.values()) == before + 1


def test_base_url_comes_from_the_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOLVE_HF_BASE_URL", hub.url + "/")
    src = get_source("climbmix")
    src.backoff = 0.01
    src.fetch(tmp_path, 1)
    assert (tmp_path / "shard_00000.parquet").is_file()


def test_server_error_then_success_is_retried(hub, tmp_path):
    path = f"/{shard_name(0)}"
    hub.plan[path] = ["500", "500"]
    assert download_file(hub.url + path, tmp_path / "a.parquet", backoff=0.01) is True
    assert hub.hits[path] == 3
    assert (tmp_path / "a.parquet").read_bytes() == hub.files[path]


def test_truncated_response_is_detected_retried_and_never_renamed_into_place(hub, tmp_path):
    path = f"/{shard_name(0)}"
    hub.plan[path] = ["truncate"]
    dest = tmp_path / "a.parquet"
    assert download_file(hub.url + path, dest, backoff=0.01) is True
    assert hub.hits[path] == 2
    assert dest.read_bytes() == hub.files[path]
    assert not (tmp_path / "a.parquet.tmp").exists()


def test_a_file_that_stays_truncated_fails_with_nothing_left_behind(hub, tmp_path):
    path = f"/{shard_name(0)}"
    hub.plan[path] = ["truncate"] * 10
    dest = tmp_path / "dl" / "a.parquet"
    with pytest.raises(PrepareError, match="after 3 attempts") as err:
        download_file(hub.url + path, dest, attempts=3, backoff=0.01)
    assert "\n" not in str(err.value)
    assert hub.hits[path] == 3
    assert list(dest.parent.iterdir()) == []  # neither the file nor its .tmp


def test_content_that_is_not_parquet_is_retried(hub, tmp_path):
    path = f"/{shard_name(1)}"
    hub.plan[path] = ["garbage"]
    src = ClimbMixSource(base_url=hub.url, backoff=0.01)
    src.fetch(tmp_path, 2)
    assert hub.hits[path] == 2
    assert len(list(src.documents("train"))) == 40


def test_corrupt_parquet_every_time_is_a_prepare_error(hub, tmp_path):
    path = f"/{shard_name(0)}"
    hub.plan[path] = ["garbage"] * 10
    with pytest.raises(PrepareError, match="not valid"):
        ClimbMixSource(base_url=hub.url, attempts=2, backoff=0.01).fetch(tmp_path, 1)
    assert not (tmp_path / shard_name(0)).exists()
    assert (tmp_path / shard_name(CLIMBMIX_VAL_SHARD)).is_file()  # the good file is kept for the resume


def test_missing_file_fails_at_once_without_retries(hub, tmp_path):
    with pytest.raises(PrepareError, match="HTTP 404"):
        download_file(hub.url + "/nope.parquet", tmp_path / "nope.parquet", backoff=0.01)
    assert hub.hits["/nope.parquet"] == 1


def test_download_all_reports_progress_per_file(hub, tmp_path):
    jobs = [DownloadJob(f"{hub.url}/{shard_name(i)}", tmp_path / shard_name(i)) for i in range(3)]
    seen = []
    assert download_all(jobs, workers=3, backoff=0.01, progress=lambda *a: seen.append(a)) == 3
    assert seen[0] == ("download", 0, 3) and seen[-1] == ("download", 3, 3)


def test_a_corrupt_raw_shard_on_disk_is_a_one_line_prepare_error(hub, tmp_path):
    src = ClimbMixSource(base_url=hub.url, backoff=0.01)
    src.fetch(tmp_path, 1)
    (tmp_path / shard_name(0)).write_bytes(b"PAR1 this is not parquet")  # damaged after download
    with pytest.raises(PrepareError, match="delete .*shard_00000.parquet") as err:
        list(src.documents("train"))
    assert "\n" not in str(err.value)


def test_num_shards_out_of_range_is_rejected(tmp_path):
    with pytest.raises(PrepareError, match="--num-shards"):
        ClimbMixSource(base_url="http://127.0.0.1:9").fetch(tmp_path, 0)
