"""Parallel ranged HTTP downloads that survive dropped connections.

The file is split into byte ranges fetched by a few threads, each written at its offset. A range
whose connection drops is retried from the byte where it stopped (resume), with backoff. The result
is checked against an expected sha256 when one is given. On failure nothing is left behind and the
error names the URL and the reason.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from cogkit.weights import sha256_file

CHUNK = 8 << 20
READ = 1 << 16


class DownloadError(Exception):
    pass


def probe(session: requests.Session, url: str, retries: int) -> tuple[int | None, bool]:
    """Size of the resource and whether the server honours byte ranges."""
    for attempt in range(retries + 1):
        try:
            resp = session.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=30)
            break
        except (requests.ConnectionError, requests.Timeout) as e:
            if attempt == retries:
                raise DownloadError(f"{url}: cannot connect after {retries} retries: {e}") from None
            time.sleep(min(0.2 * 2 ** (attempt + 1), 5))
    resp.close()
    if resp.status_code == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return (int(total) if total.isdigit() else None), True
    if resp.status_code == 200:
        length = resp.headers.get("Content-Length")
        return (int(length) if length else None), False
    raise DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}")


def fetch_range(session, url: str, fd: int, start: int, end: int, retries: int) -> None:
    """Fetch bytes [start, end] into `fd`, resuming after each drop."""
    pos, attempt = start, 0
    while pos <= end:
        try:
            with session.get(url, headers={"Range": f"bytes={pos}-{end}"}, stream=True, timeout=30) as resp:
                if resp.status_code != 206:
                    raise DownloadError(f"{url}: HTTP {resp.status_code} for range {pos}-{end}")
                for block in resp.iter_content(READ):
                    os.pwrite(fd, block, pos)
                    pos += len(block)
            if pos <= end:
                raise requests.ConnectionError(f"connection closed at byte {pos} of range {start}-{end}")
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"{url}: gave up after {retries} retries at byte {pos}: {e}") from None
            time.sleep(min(0.2 * 2 ** attempt, 5))


def fetch_whole(session, url: str, fd: int, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            os.ftruncate(fd, 0)
            pos = 0
            with session.get(url, stream=True, timeout=30) as resp:
                resp.raise_for_status()
                for block in resp.iter_content(READ):
                    os.pwrite(fd, block, pos)
                    pos += len(block)
            return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            if attempt == retries:
                raise DownloadError(f"{url}: gave up after {retries} retries: {e}") from None
            time.sleep(min(0.2 * 2 ** (attempt + 1), 5))


def download(url: str, dest: Path, sha256: str | None = None, workers: int = 4, retries: int = 5,
             chunk: int = CHUNK) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    headers = {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"} if os.environ.get("HF_TOKEN") and \
        "huggingface.co" in url else {}
    session = requests.Session()
    session.headers.update(headers)
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size, ranged = probe(session, url, retries)
        if ranged and size:
            os.ftruncate(fd, size)
            ranges = [(a, min(a + chunk, size) - 1) for a in range(0, size, chunk)]
            with ThreadPoolExecutor(workers) as pool:
                for f in [pool.submit(fetch_range, session, url, fd, a, b, retries) for a, b in ranges]:
                    f.result()
        else:
            fetch_whole(session, url, fd, retries)
        os.fsync(fd)
        if sha256:
            got = sha256_file(part)
            if got != sha256.lower():
                raise DownloadError(f"{url}: sha256 {got} does not match the expected {sha256}")
        os.replace(part, dest)
        return dest
    except requests.RequestException as e:
        raise DownloadError(f"{url}: {e}") from None
    finally:
        os.close(fd)
        part.unlink(missing_ok=True)
        session.close()
