"""Robust file downloads: streamed, checksummed, atomic, retried, and never repeated once verified.

:func:`fetch` is the one entry point::

    fetch("https://host/file.tar.gz", Path("data/downloads/file.tar.gz"), md5="c58f...")

* the body is streamed in chunks into ``<dest>.part`` next to ``dest`` while its md5 is computed,
  and only a complete, verified file is moved into place with :func:`os.replace`, so ``dest``
  either does not exist or holds the whole verified file;
* transient failures (connection errors, timeouts, HTTP 5xx/408/429, a body shorter than its
  Content-Length) are retried with exponential backoff; a retry resumes with an HTTP ``Range``
  request where the server allows it, so a 3 GB archive does not restart from zero;
* other HTTP errors (404, 403, ...) fail at once with a :class:`DownloadError` naming the URL;
* a checksum mismatch removes the bad file and raises :class:`ChecksumError`;
* an existing ``dest`` whose md5 verifies is returned without touching the network. The
  verification is cached in a ``<dest>.md5`` sidecar (md5, size, mtime) so that multi-GB
  archives are not re-hashed on every run;
* concurrent processes fetching the same ``dest`` (parallel Snakemake jobs) are serialised by an
  advisory lock on ``<dest>.lock``: the second one finds the verified file and returns.

Only the standard library's urllib is used (``http://``, ``https://`` and ``file://`` URLs).

Why not pooch (1.9): it verifies a known hash and moves only a verified file into place, as this
module does, but it restarts an interrupted download from byte 0 (no ``Range``), hashes an
existing file again on every call, has no lock against two processes fetching one file (both
download it), no ``file://`` URLs (``download.mirror`` may be a local folder), and
``pooch.retrieve`` does not retry. ``benchmarks/download_resume.py`` measures the first two: a
transfer cut half-way sends 1.5 times the file's bytes with pooch, 1.0 with :func:`fetch`; for
CIFAR-10-C (2.9 GB) that is 1.5 GB again, 4.9 minutes at 5 MB/s, and 5.6 s of hashing per call.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

from tqdm import tqdm

from .files import atomic_path

__all__ = [
    "RemoteFile",
    "DownloadError",
    "ChecksumError",
    "fetch",
    "resolve_url",
    "file_md5",
    "BACKOFF_BASE",
]

CHUNK_SIZE = 1 << 20
# Seconds before the first retry; doubled for each further one. The environment variable lets
# tests (and impatient users) shorten it, also in Snakemake jobs that inherit the environment.
BACKOFF_BASE = float(os.environ.get("STIRFLOW_DOWNLOAD_BACKOFF", "1.0"))
USER_AGENT = "stirflow-download/0.1 (+python-urllib)"
# Client errors that are worth retrying: request timeout, too early, too many requests.
_RETRY_4XX = frozenset({408, 425, 429})


class DownloadError(RuntimeError):
    """A file could not be downloaded (bad URL, HTTP error, retries exhausted)."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the expected md5; the bad file has been removed."""


class _TransientError(Exception):
    """A failure that may go away when the request is repeated."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: the name it is stored under, its official URL and its md5."""

    filename: str
    url: str
    md5: str | None


# --------------------------------------------------------------------------- public API


def resolve_url(filename_entry: RemoteFile | Mapping[str, Any] | tuple, mirror: str | None) -> str:
    """The URL to fetch a file from: the official one, or ``<mirror>/<filename>`` with a mirror.

    ``filename_entry`` is a :class:`RemoteFile`, a mapping with ``filename`` and ``url`` keys, or a
    ``(filename, url[, md5])`` tuple. ``mirror`` is a base URL (``http://``, ``https://``,
    ``file://``) or a local directory path, which is turned into a ``file://`` URL.
    """
    filename, url = _entry_fields(filename_entry)
    if not mirror:
        return url
    mirror = str(mirror)
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + urllib.parse.quote(filename)


def fetch(url: str, dest: str | os.PathLike, *, md5: str | None, retries: int = 3, timeout: float = 60,
          progress: bool = True, backoff: float | None = None) -> Path:
    """Download ``url`` to ``dest`` (atomically, md5-verified, with retries) and return ``dest``.

    Args:
        url: where to download from (``http(s)://`` or ``file://``).
        dest: the final file path; its folder is created.
        md5: the expected md5 (hex); ``None`` skips verification (an existing file is then kept).
        retries: how many times a transient failure is retried (``retries + 1`` attempts in all).
        timeout: seconds to wait for the connection and for each read.
        progress: show a tqdm progress bar on stderr.
        backoff: seconds before the first retry, doubled each time (default :data:`BACKOFF_BASE`).

    Raises:
        DownloadError: HTTP 4xx (not retried) or retries exhausted; the URL is in the message.
        ChecksumError: the downloaded file's md5 differs from ``md5``; the file is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    md5 = md5.lower() if md5 else None
    backoff = BACKOFF_BASE if backoff is None else backoff
    with _locked(dest):
        if _existing_is_valid(dest, md5, progress):
            return dest
        part = dest.with_name(dest.name + ".part")
        try:
            digest = _download(url, part, retries=retries, timeout=timeout, progress=progress,
                               backoff=backoff, label=dest.name)
            if md5 is not None and digest != md5:
                raise ChecksumError(f"{dest}: md5 mismatch for {url}: expected {md5}, got {digest}; "
                                    f"the bad download was removed")
            _sidecar(dest).unlink(missing_ok=True)  # never leave a sidecar describing an older file
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)  # a failed or interrupted download leaves nothing behind
        _write_sidecar(dest, digest)
    _say(f"downloaded {url} -> {dest}")
    return dest


def file_md5(path: str | os.PathLike, progress: bool = False) -> str:
    """The md5 (hex) of a file, read in chunks."""
    path = Path(path)
    hasher = hashlib.md5()
    with open(path, "rb") as f, _bar(path.stat().st_size, f"md5 {path.name}", progress) as bar:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            hasher.update(chunk)
            bar.update(len(chunk))
    return hasher.hexdigest()


# --------------------------------------------------------------------------- verification cache


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".md5")


def _write_sidecar(dest: Path, digest: str) -> None:
    """Record the verified md5 with the size and mtime it belongs to (written atomically)."""
    st = dest.stat()
    with atomic_path(_sidecar(dest)) as tmp:
        tmp.write_text(json.dumps({"md5": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")


def _cached_md5(dest: Path) -> str | None:
    """The md5 the sidecar records, if the sidecar still describes the file as it is now."""
    try:
        record = json.loads(_sidecar(dest).read_text())
        st = dest.stat()
        if record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns:
            return str(record["md5"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _existing_is_valid(dest: Path, md5: str | None, progress: bool) -> bool:
    """True if ``dest`` exists and verifies; an existing file that fails is removed."""
    if not dest.is_file():
        return False
    if md5 is None:
        return True  # nothing to check against; files only ever appear complete (os.replace)
    actual = _cached_md5(dest)
    if actual is None:
        _say(f"verifying {dest}")
        actual = file_md5(dest, progress)
        _write_sidecar(dest, actual)
    if actual == md5:
        return True
    _say(f"{dest}: md5 {actual} differs from the expected {md5}; downloading it again")
    _sidecar(dest).unlink(missing_ok=True)
    dest.unlink()
    return False


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<dest>.lock`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no concurrent-download protection
        yield
        return
    with open(dest.with_name(dest.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process downloading {dest}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- transfer


class _Transfer:
    """The state of one download across attempts: the part file, its md5 so far, its validator."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.hasher = hashlib.md5()
        self.written = 0
        self.validator: str | None = None  # ETag or Last-Modified, sent as If-Range on resume

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.hasher = hashlib.md5()
        self.written = 0


def _download(url: str, part: Path, *, retries: int, timeout: float, progress: bool, backoff: float,
              label: str) -> str:
    """Stream ``url`` into ``part`` with retries; return the md5 of the complete body."""
    _say(f"downloading {url}")
    with open(part, "wb") as out:
        transfer = _Transfer(out)
        for attempt in range(retries + 1):
            try:
                _attempt(url, transfer, timeout=timeout, progress=progress, label=label)
                return transfer.hasher.hexdigest()
            except _TransientError as err:
                if attempt == retries:
                    raise DownloadError(f"{url}: download failed after {retries + 1} attempt(s): {err}") from None
                delay = backoff * 2**attempt
                _say(f"{url}: {err}; retry {attempt + 1}/{retries} in {delay:.2g} s")
                time.sleep(delay)
    raise AssertionError("unreachable")


def _attempt(url: str, transfer: _Transfer, *, timeout: float, progress: bool, label: str) -> None:
    """One HTTP request; appends to the part file (resuming with Range when bytes are already there)."""
    headers = {"User-Agent": USER_AGENT}
    if transfer.written:
        headers["Range"] = f"bytes={transfer.written}-"
        if transfer.validator:
            headers["If-Range"] = transfer.validator  # a changed file is answered in full, not spliced
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and transfer.written:  # our Range is past the end: the file changed
            transfer.restart()
            raise _TransientError("HTTP 416 on resume; restarting from the beginning") from None
        if err.code >= 500 or err.code in _RETRY_4XX:
            raise _TransientError(f"HTTP {err.code} {err.reason}") from None
        hint = " (not found)" if err.code == 404 else ""
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise _TransientError(f"cannot connect: {reason}") from None
    with response:
        remaining = _start_body(response, transfer)
        total = None if remaining is None else transfer.written + remaining
        received = 0
        # read1 returns what has arrived instead of blocking until a whole chunk is in.
        read = getattr(response, "read1", response.read)
        with _bar(total, label, progress, initial=transfer.written) as bar:
            while True:
                try:
                    chunk = read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as err:
                    raise _TransientError(f"connection lost after {transfer.written} bytes: {err!r}") from None
                if not chunk:
                    break
                transfer.out.write(chunk)
                transfer.hasher.update(chunk)
                transfer.written += len(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" at a premature EOF instead of raising: compare with Content-Length.
    if remaining is not None and received < remaining:
        raise _TransientError(f"truncated response: got {transfer.written} of {total} bytes")


def _start_body(response: Any, transfer: _Transfer) -> int | None:
    """Check how the server answered a (possibly ranged) request; return the body length if known."""
    status = getattr(response, "status", None) or 200  # file:// responses have no status
    headers = response.headers
    if transfer.written:
        content_range = headers.get("Content-Range", "")
        if status == 206 and content_range.startswith(f"bytes {transfer.written}-"):
            _say(f"resuming at byte {transfer.written}")
        else:  # the server ignored the Range (or the file changed): take the full body
            transfer.restart()
    etag = headers.get("ETag")
    # Weak ETags are not allowed in If-Range; Last-Modified is the fallback validator.
    transfer.validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    length = headers.get("Content-Length")
    try:
        return int(length) if length is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- helpers


def _entry_fields(entry: RemoteFile | Mapping[str, Any] | tuple) -> tuple[str, str]:
    if isinstance(entry, RemoteFile):
        return entry.filename, entry.url
    if isinstance(entry, Mapping):
        return str(entry["filename"]), str(entry["url"])
    if isinstance(entry, (tuple, list)) and len(entry) >= 2:
        return str(entry[0]), str(entry[1])
    raise TypeError(f"expected a RemoteFile, a mapping or a (filename, url) tuple, got {entry!r}")


def _bar(total: int | None, label: str, progress: bool, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not progress, leave=False, mininterval=0.5)


def _say(message: str) -> None:
    """Progress and retry messages go to stderr (Snakemake keeps them in the job log)."""
    print(message, file=sys.stderr, flush=True)
