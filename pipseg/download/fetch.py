"""Resumable, verified HTTP downloads of single files.

A fetch streams into ``<name>.part``, resumes it with an HTTP Range request next time, retries
connection errors with exponential backoff, checks the result against its checksum and only then
renames it into place, so a file under its final name is always whole. Nothing here prints:
callers pass a ``progress(bytes_done, bytes_total_or_None)`` callback.
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import string
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pipseg import __version__
from pipseg.errors import PipsegError
from pipseg.io import file_digest

Progress = Callable[[int, int | None], None]
"""Called as ``progress(bytes_done, bytes_total)`` while a file streams in (total may be None)."""

Algorithm = Literal["md5", "sha256"]
CHUNK_SIZE = 1 << 20
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Errors of the connection, not of the file: worth another attempt.
_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)
_HEX_LENGTH = {"md5": 32, "sha256": 64}
_MIN_PREFIX = 8  # torchvision weight names carry the first 8 hex digits of the file's SHA-256


@dataclass(frozen=True)
class Checksum:
    """An expected digest: a full md5 / sha256, or a sha256 prefix (at least 8 hex digits)."""

    algorithm: Algorithm
    hexdigest: str

    def __post_init__(self) -> None:
        value = self.hexdigest.strip().lower()
        full = _HEX_LENGTH.get(self.algorithm)
        if full is None:
            raise PipsegError(f"checksum: unknown algorithm '{self.algorithm}'; use md5 or sha256")
        if not value or any(c not in string.hexdigits for c in value):
            raise PipsegError(f"--{self.algorithm} {self.hexdigest}: not a hexadecimal digest")
        shortest = full if self.algorithm == "md5" else _MIN_PREFIX
        if not shortest <= len(value) <= full:
            need = f"{full}" if shortest == full else f"{shortest} to {full}"
            raise PipsegError(
                f"--{self.algorithm} {self.hexdigest}: expected {need} hex digits, got {len(value)}"
            )
        object.__setattr__(self, "hexdigest", value)

    @property
    def is_prefix(self) -> bool:
        """True when only the leading digits of the digest are known."""
        return len(self.hexdigest) < _HEX_LENGTH[self.algorithm]

    @property
    def kind(self) -> str:
        """What is checked, for tables: ``md5``, ``sha256`` or ``sha256 prefix``."""
        return f"{self.algorithm} prefix" if self.is_prefix else self.algorithm

    def matches(self, actual_hexdigest: str) -> bool:
        """Whether a full digest of the same algorithm agrees with this one."""
        return actual_hexdigest.lower().startswith(self.hexdigest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


class ChecksumError(PipsegError):
    """A downloaded file did not match its expected digest (the file was deleted)."""


class _Retryable(Exception):
    """A failed attempt that another attempt may fix (the reason is the message)."""


@dataclass(frozen=True)
class FetchResult:
    """What `fetch` did for one file."""

    path: Path
    url: str
    status: Literal["downloaded", "present"]
    verified: bool
    resumed_from: int = 0
    received: int = 0


@dataclass
class _Stats:
    """What the attempts of one fetch received, and whether a server made it start over."""

    received: int = 0
    restarted: bool = False


def apply_mirror(url: str, mirror: str | None) -> str:
    """Replace the scheme and host(:port) of ``url`` by the mirror's, keeping the path.

    A path in ``mirror`` is put in front: ``http://m/pub`` + ``http://a/x.tar`` -> ``http://m/pub/x.tar``.
    """
    if not mirror:
        return url
    base = urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise PipsegError(f"--mirror {mirror}: expected a base URL such as http://host:8000")
    u = urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + u.path, u.query, ""))


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/total`` header."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if m is None:
        return None, None
    return int(m.group(1)), None if m.group(2) == "*" else int(m.group(2))


def _open(url: str, part: Path, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """The response for the bytes from ``offset`` on; None when there is nothing left to send."""
    headers = {"User-Agent": f"pipseg/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            return None  # the partial file is whole (the checksum decides)
        if e.code in RETRY_STATUS:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise PipsegError(
            f"{url}: HTTP {e.code} {e.reason}; check the URL (or --mirror), or download the file "
            f"by hand and put it at {part.with_suffix('')}"
        ) from None
    except _NETWORK_ERRORS as e:
        raise _Retryable(str(getattr(e, "reason", e))) from None


def _transfer(url: str, part: Path, timeout: float, progress: Progress | None, stats: _Stats) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (or restart it when Range is ignored)."""
    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, part, offset, timeout)
    if response is None:
        return
    with response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        if response.status == 206:
            start, full = _content_range(response.headers.get("Content-Range"))
            if start != offset:  # not the range we asked for: the next attempt starts over
                part.unlink(missing_ok=True)
                raise _Retryable(f"asked for bytes from {offset}, the server sent from {start}")
            total = full if full is not None else (offset + total if total is not None else None)
        else:  # 200: the server ignored Range and sends the whole file
            stats.restarted = stats.restarted or offset > 0
            offset = 0
        done = _stream(response, part, offset, total, progress, stats)
    if total is not None and done < total:
        raise _Retryable(f"connection closed after {done} of {total} bytes")


def _stream(
    response: http.client.HTTPResponse, part: Path, offset: int, total: int | None,
    progress: Progress | None, stats: _Stats,
) -> int:  # fmt: skip
    """Write the response body to ``part`` from byte ``offset`` on; the bytes it then holds."""
    done = offset
    try:
        with open(part, "ab" if offset else "wb") as out:
            while chunk := response.read(CHUNK_SIZE):
                out.write(chunk)
                done += len(chunk)
                stats.received += len(chunk)
                if progress is not None:
                    progress(done, total)
    except _NETWORK_ERRORS as e:
        raise _Retryable(f"connection lost after {done} bytes: {e}") from None
    return done


def _present(path: Path, url: str, checksum: Checksum | None) -> FetchResult:
    """A file already under its final name: taken as it is, or verified when a digest is known."""
    if checksum is None:
        return FetchResult(path, url, "present", verified=False)
    digest = file_digest(path, checksum.algorithm)
    if not checksum.matches(digest):
        raise ChecksumError(
            f"{path}: already there but its {checksum.algorithm} is {digest}, expected "
            f"{checksum.hexdigest}; delete it and run again"
        )
    return FetchResult(path, url, "present", verified=True)


def _download(
    url: str, path: Path, part: Path, *, retries: int, backoff: float, timeout: float,
    progress: Progress | None, stats: _Stats,
) -> None:  # fmt: skip
    """Fill ``part`` with the whole file, retrying with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, progress, stats)
            return
        except _Retryable as e:
            if attempt == retries:
                raise PipsegError(_failed_message(url, path, part, str(e), retries + 1)) from None
            time.sleep(backoff * 2**attempt)


def _verify(part: Path, url: str, checksum: Checksum) -> None:
    """Delete ``part`` and raise `ChecksumError` unless it has the expected digest."""
    digest = file_digest(part, checksum.algorithm)
    if not checksum.matches(digest):
        part.unlink()
        raise ChecksumError(
            f"{url}: the downloaded file's {checksum.algorithm} is {digest}, expected "
            f"{checksum.hexdigest}; deleted it; run again (or try --mirror)"
        )


def fetch(
    url: str,
    path: str | os.PathLike[str],
    *,
    checksum: Checksum | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> FetchResult:
    """Download ``url`` to ``path``: resumable, retried, verified, renamed into place when whole.

    Args:
        url: what to fetch (http, https).
        path: the final file; ``<path>.part`` holds an unfinished download between runs.
        checksum: expected digest; without one the file is taken as it arrives.
        retries: further attempts after a connection error or a cut transfer.
        backoff: seconds before the first retry, doubling after each.
        timeout: socket timeout in seconds.
        progress: optional ``(bytes_done, bytes_total)`` callback.

    Returns:
        A `FetchResult`; status ``present`` when a (verified) file was already there.

    Raises:
        PipsegError: no connection after all retries, an HTTP error status, or a file that
            cannot be written. `ChecksumError` for a digest mismatch (the file is deleted).
    """
    path = Path(path)
    if path.is_file():
        return _present(path, url, checksum)
    part = path.with_name(path.name + ".part")
    stats = _Stats()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        resumed_from = part.stat().st_size if part.is_file() else 0
        _download(url, path, part, retries=retries, backoff=backoff, timeout=timeout,
                  progress=progress, stats=stats)  # fmt: skip
        if checksum is not None:
            _verify(part, url, checksum)
        os.replace(part, path)
    except OSError as e:
        raise PipsegError(
            f"{part}: cannot write the download ({e}); check the folder and free space"
        ) from None
    return FetchResult(
        path, url, "downloaded", verified=checksum is not None,
        resumed_from=0 if stats.restarted else resumed_from, received=stats.received,
    )  # fmt: skip


def _failed_message(url: str, path: Path, part: Path, reason: str, attempts: int) -> str:
    kept = part.stat().st_size if part.is_file() else 0
    resume = f"; {part.name} keeps {kept} bytes, run again to resume" if kept else ""
    return (
        f"{url}: cannot download ({reason}) after {attempts} attempt(s){resume}; check the network "
        f"(or --mirror), or download the file by hand and put it at {path}"
    )


def fetch_first(urls: Sequence[str], path: str | os.PathLike[str], **kwargs) -> FetchResult:
    """`fetch` from the first of ``urls`` that works; all failures in one message otherwise."""
    errors = []
    for url in urls:
        try:
            return fetch(url, path, **kwargs)
        except ChecksumError as e:
            if Path(path).is_file():  # the file already there is wrong: no URL will fix that
                raise
            errors.append(str(e))
        except PipsegError as e:
            errors.append(str(e))
    raise PipsegError("\n".join(errors) or f"{path}: no URL to download from")
