"""Downloading files over HTTP: parallel, retried with exponential backoff, resumable, atomic.

A file is streamed to `<name>.tmp`, its length checked against Content-Length, its content checked
by a caller-supplied `verify` (e.g. "opens as parquet"), and only then renamed into place. So a
file under its final name is always complete, and a second call skips it: that is the resume.
"""

from __future__ import annotations

import errno
import http.client
import os
import random
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .errors import PrepareError

Progress = Callable[[str, int, "int | None"], None]
Verify = Callable[[Path], None]

CHUNK = 1 << 20
USER_AGENT = "autoevolve-prepare/0.1"


@dataclass(frozen=True)
class DownloadJob:
    """One file to fetch: from `url` to `dest`."""

    url: str
    dest: Path


class _Retryable(Exception):
    """A failure worth another attempt (network error, 5xx, short body, content that fails `verify`)."""


def _free_mb(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free >> 20
    except OSError:
        return -1


def _disk_full(dest: Path, need_bytes: int | None) -> PrepareError:
    need = f"about {need_bytes / 2**20:.0f} MB" if need_bytes else "more space"
    return PrepareError(
        f"disk full while downloading {dest.name} into {dest.parent} ({_free_mb(dest.parent)} MB free, "
        f"{need} needed for this file); free space or set EVOLVE_HOME to a bigger disk, then rerun"
    )


def _attempt(url: str, dest: Path, tmp: Path, timeout: float, verify: Verify | None) -> int:
    """One try: stream to `tmp`, check length and content, rename to `dest`. Returns bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    token = os.environ.get("HF_TOKEN")
    if token:  # for the hub only: not forwarded when it redirects to a CDN
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    expected: int | None = None
    written = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Retryable(f"HTTP {e.code} from {url}") from None
        raise PrepareError(
            f"{url} answered HTTP {e.code}; check the source name, --num-shards and EVOLVE_HF_BASE_URL"
        ) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            tmp.unlink(missing_ok=True)
            raise _disk_full(dest, expected) from None
        raise _Retryable(f"{type(e).__name__}: {e}") from None
    except http.client.HTTPException as e:  # IncompleteRead: the server closed the connection early
        raise _Retryable(f"{type(e).__name__} from {url}") from None
    if expected is not None and written != expected:
        raise _Retryable(f"short body from {url}: {written} of {expected} bytes")
    if verify is not None:
        try:
            verify(tmp)
        except Exception as e:
            raise _Retryable(f"downloaded {dest.name} is not valid ({e})") from None
    os.replace(tmp, dest)
    return written


def download_file(
    url: str,
    dest: Path,
    *,
    attempts: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    verify: Verify | None = None,
) -> bool:
    """Fetch `url` to `dest` unless `dest` already exists. Returns True when it downloaded.

    Retries network errors, 5xx/429, short bodies and content that `verify` rejects, waiting
    `backoff * 2**attempt` seconds (plus jitter) between attempts; a 4xx other than 429 fails at
    once. Nothing ever appears under `dest` unless it was complete and verified."""
    dest = Path(dest)
    if dest.is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    last = ""
    for attempt in range(attempts):
        try:
            _attempt(url, dest, tmp, timeout, verify)
            return True
        except _Retryable as e:
            last = str(e)
            tmp.unlink(missing_ok=True)
            if attempt + 1 < attempts:
                delay = backoff * 2**attempt
                time.sleep(delay + random.uniform(0, delay / 2))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    raise PrepareError(
        f"could not download {dest.name} after {attempts} attempts ({last}); check the network and "
        "rerun `evolve prepare` (finished files are kept)"
    )


def download_all(
    jobs: Sequence[DownloadJob],
    *,
    workers: int = 8,
    attempts: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    verify: Verify | None = None,
    progress: Progress | None = None,
) -> int:
    """Download every job not yet present, `workers` at a time. Returns how many were downloaded.

    The first failure (after its retries) is raised once the files in flight have finished."""
    total = len(jobs)
    done = sum(1 for job in jobs if Path(job.dest).is_file())
    if progress:
        progress("download", done, total)
    todo = [job for job in jobs if not Path(job.dest).is_file()]
    if not todo:
        return 0
    fetched = 0
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        futures = [
            pool.submit(
                download_file,
                job.url,
                Path(job.dest),
                attempts=attempts,
                backoff=backoff,
                timeout=timeout,
                verify=verify,
            )
            for job in todo
        ]
        try:
            for future in as_completed(futures):
                try:
                    fetched += int(future.result())
                except Exception as e:  # keep the others going; report the first failure
                    error = error or e
                    continue
                done += 1
                if progress:
                    progress("download", done, total)
        except KeyboardInterrupt:
            # Don't start queued files; those in flight finish (or leave only a .tmp behind).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if error is not None:
        raise error
    return fetched
