"""Resumable, verified downloads: single files by URL and the named assets of `pipseg.assets`.

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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pipseg import __version__
from pipseg.archive import ExtractProgress, extract_archive, is_extracted
from pipseg.assets import Asset, Checksum
from pipseg.config import default_weights_dir
from pipseg.errors import PipsegError
from pipseg.io import file_digest

Progress = Callable[[int, int | None], None]
"""Called as ``progress(bytes_done, bytes_total)`` while a file streams in (total may be None)."""

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


@dataclass(frozen=True)
class AssetResult:
    """What `download_asset` did: ``downloaded``, ``extracted`` (from a file already there),
    ``present`` (nothing to do) or ``manual`` (the user must fetch it; see ``note``)."""

    asset: Asset
    status: Literal["downloaded", "extracted", "present", "manual"]
    destination: Path
    fetch: FetchResult | None = None
    extracted: bool = False
    note: str | None = None


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


def _transfer(url: str, part: Path, timeout: float, progress: Progress | None, stats: dict) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (or restart it when Range is ignored)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"pipseg/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            return  # nothing left to send: the partial file is whole (the checksum decides)
        if e.code in RETRY_STATUS:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise PipsegError(
            f"{url}: HTTP {e.code} {e.reason}; check the URL (or --mirror), or download the file "
            f"by hand and put it at {part.with_suffix('')}"
        ) from None
    except _NETWORK_ERRORS as e:
        raise _Retryable(str(getattr(e, "reason", e))) from None
    with response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        if response.status == 206:
            start, full = _content_range(response.headers.get("Content-Range"))
            if start != offset:  # not the range we asked for: the next attempt starts over
                part.unlink(missing_ok=True)
                raise _Retryable(f"asked for bytes from {offset}, the server sent from {start}")
            total = full if full is not None else (offset + total if total is not None else None)
            mode = "ab"
        else:  # 200: the server ignored Range and sends the whole file
            if offset:
                stats["restarted"] = True
            offset, mode = 0, "wb"
        done = offset
        try:
            with open(part, mode) as out:
                while chunk := response.read(CHUNK_SIZE):
                    out.write(chunk)
                    done += len(chunk)
                    stats["received"] += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except _NETWORK_ERRORS as e:
            raise _Retryable(f"connection lost after {done} bytes: {e}") from None
    if total is not None and done < total:
        raise _Retryable(f"connection closed after {done} of {total} bytes")


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
        if checksum is None:
            return FetchResult(path, url, "present", verified=False)
        digest = file_digest(path, checksum.algorithm)
        if not checksum.matches(digest):
            raise ChecksumError(
                f"{path}: already there but its {checksum.algorithm} is {digest}, expected "
                f"{checksum.hexdigest}; delete it and run again"
            )
        return FetchResult(path, url, "present", verified=True)
    part = path.with_name(path.name + ".part")
    stats = {"received": 0, "restarted": False}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        resumed_from = part.stat().st_size if part.is_file() else 0
        for attempt in range(retries + 1):
            try:
                _transfer(url, part, timeout, progress, stats)
                break
            except _Retryable as e:
                if attempt == retries:
                    raise PipsegError(
                        _failed_message(url, path, part, str(e), retries + 1)
                    ) from None
                time.sleep(backoff * 2**attempt)
        if checksum is not None:
            digest = file_digest(part, checksum.algorithm)
            if not checksum.matches(digest):
                part.unlink()
                raise ChecksumError(
                    f"{url}: the downloaded file's {checksum.algorithm} is {digest}, expected "
                    f"{checksum.hexdigest}; deleted it; run again (or try --mirror)"
                )
        os.replace(part, path)
    except PipsegError:
        raise
    except OSError as e:
        raise PipsegError(
            f"{part}: cannot write the download ({e}); check the folder and free space"
        ) from None
    return FetchResult(
        path,
        url,
        "downloaded",
        verified=checksum is not None,
        resumed_from=0 if stats["restarted"] else resumed_from,
        received=stats["received"],
    )


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


def url_asset(url: str, *, checksum: Checksum | None = None, extract: bool = False) -> Asset:
    """An ad-hoc asset for ``pipseg download --url``: saved under ``--dest`` by its file name."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not urlsplit(url).scheme or not name or name in (".", ".."):
        raise PipsegError(
            f"--url {url}: expected a URL ending in a file name, e.g. https://host/file.tar"
        )
    return Asset(
        name=name,
        description=url,
        filename=name,
        urls=(url,),
        checksum=checksum,
        extract_to="." if extract else None,
    )


def download_asset(
    asset: Asset,
    *,
    dest: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
    mirror: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
    extract_progress: ExtractProgress | None = None,
) -> AssetResult:
    """Fetch, verify and (for archives) extract one asset into the default layout.

    Datasets land under ``dest`` (VOC in ``VOCdevkit/VOC2012``, SBD in ``benchmark_RELEASE``);
    weights in ``weights_dir`` (default `pipseg.config.default_weights_dir()`). An archive whose
    extraction marker records the expected checksum is skipped without downloading, so the
    archive may be deleted after extraction. Manual assets are never fetched: the result carries
    the instructions.
    """
    dest = Path(dest).expanduser()
    weights_dir = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    destination = asset.destination(dest, weights_dir)
    if asset.manual is not None:
        if destination.is_dir() and any(destination.iterdir()):
            return AssetResult(asset, "present", destination)
        return AssetResult(
            asset, "manual", destination, note=asset.manual.format(destination=destination)
        )
    file = asset.file_path(dest, weights_dir)
    target = asset.base_dir(dest, weights_dir) / asset.extract_to if asset.extract_to else None
    key = str(asset.checksum) if asset.checksum else None
    if target is not None and key is not None and is_extracted(file, target, key):
        return AssetResult(asset, "present", destination)
    urls = [apply_mirror(u, mirror) for u in asset.urls]
    fetched = fetch_first(
        urls, file, checksum=asset.checksum, retries=retries, backoff=backoff, timeout=timeout,
        progress=progress,
    )  # fmt: skip
    extracted = target is not None and extract_archive(
        file, target, key=key, progress=extract_progress
    )
    status = (
        "downloaded" if fetched.status == "downloaded" else "extracted" if extracted else "present"
    )
    return AssetResult(asset, status, destination, fetch=fetched, extracted=extracted)
