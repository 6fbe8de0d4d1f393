"""Safe, resumable extraction of tar / tar.gz / zip archives.

Every member is checked before anything is written: absolute paths, ``..`` components, links
that point outside the target, members reached through a link, and device files are refused,
so a hostile archive writes nothing at all. Tar members are then extracted with tarfile's
``data`` filter as a second line of defence. A marker file written after a complete extraction
makes the next run a no-op; an interrupted run redoes only the files it had not finished.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pipseg.errors import PipsegError
from pipseg.io import atomic_write_text

ExtractProgress = Callable[[int, int], None]
"""Called as ``progress(members_done, members_total)``."""

# tarfile's "data" filter (Python 3.12, backported to 3.10.12 / 3.11.4) refuses what we refuse.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def marker_path(archive: Path, target: Path) -> Path:
    """The file that records a complete extraction of ``archive`` into ``target``."""
    return Path(target) / f".{Path(archive).name}.extracted"


def is_extracted(archive: Path, target: Path, key: str) -> bool:
    """Whether ``archive`` was completely extracted into ``target`` with the same ``key``."""
    marker = marker_path(archive, target)
    try:
        return marker.read_text(encoding="utf-8").strip() == key
    except OSError:
        return False


def _refuse(archive: Path, name: str, why: str) -> PipsegError:
    return PipsegError(
        f"{archive}: member '{name}' {why}; nothing was extracted (the archive is unsafe or corrupt)"
    )


def _inside(path: str) -> bool:
    """Whether a normalised relative POSIX path stays inside the folder it is relative to."""
    return path != ".." and not path.startswith("../")


def _check_member(
    archive: Path, target: Path, name: str, link: str | None, hardlink: bool, links: set[str]
) -> None:
    """Refuse a member whose path or link target could land outside ``target``."""
    if name.startswith("/") or os.path.isabs(name):
        raise _refuse(archive, name, "has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, name, "has a '..' component")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            raise _refuse(archive, name, "lies inside a link of the same archive")
    clean = "/".join(parts)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_target, os.path.realpath(target / clean)]) != real_target:
        raise _refuse(
            archive, name, f"would be written outside {target} (through an existing link)"
        )
    if link is None:
        return
    if link.startswith("/") or os.path.isabs(link):
        raise _refuse(archive, name, f"is a link to the absolute path '{link}'")
    resolved = posixpath.normpath(
        link if hardlink else posixpath.join(posixpath.dirname(clean), link)
    )
    if not _inside(resolved):
        raise _refuse(archive, name, f"is a link to '{link}', outside the target")
    links.add(clean)


def _check_tar(archive: Path, target: Path, members: list[tarfile.TarInfo]) -> None:
    links: set[str] = set()
    for m in members:
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise _refuse(archive, m.name, "is a device, FIFO or other special file")
        link = m.linkname if (m.issym() or m.islnk()) else None
        _check_member(archive, target, m.name, link, m.islnk(), links)


def _zip_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _check_zip(archive: Path, target: Path, zf: zipfile.ZipFile) -> None:
    links: set[str] = set()
    for info in zf.infolist():
        name = info.filename
        if "\\" in name or (len(name) > 1 and name[1] == ":"):
            raise _refuse(archive, name, "has a Windows path")
        link = zf.read(info).decode("utf-8", "replace") if _zip_symlink(info) else None
        _check_member(archive, target, name, link, False, links)


def _done(path: Path, size: int) -> bool:
    """A file from an earlier, interrupted run that is already whole."""
    return path.is_file() and not path.is_symlink() and path.stat().st_size == size


def _extract_tar(archive: Path, target: Path, progress: ExtractProgress | None) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        _check_tar(archive, target, members)

        def todo() -> Iterator[tarfile.TarInfo]:
            for i, m in enumerate(members):
                if progress is not None:
                    progress(i, len(members))
                dest = target / m.name
                if m.isfile() and _done(dest, m.size):
                    continue
                if (m.issym() or m.islnk()) and (dest.is_symlink() or dest.is_file()):
                    dest.unlink()  # a link from an earlier run: tarfile will not replace it
                yield m

        # extractall (not extract per member) sets folder permissions last, after their files.
        tf.extractall(target, members=todo(), **_TAR_FILTER)
        if progress is not None:
            progress(len(members), len(members))


def _extract_zip(archive: Path, target: Path, progress: ExtractProgress | None) -> None:
    with zipfile.ZipFile(archive) as zf:
        _check_zip(archive, target, zf)
        infos = zf.infolist()
        for i, info in enumerate(infos, 1):
            dest = target / info.filename
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif not _done(dest, info.file_size):
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            if progress is not None:
                progress(i, len(infos))


def extract_archive(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    key: str | None = None,
    progress: ExtractProgress | None = None,
) -> bool:
    """Extract a tar (any compression) or zip ``archive`` into ``target``, safely.

    Args:
        archive: the archive file.
        target: the folder to extract into (created if missing).
        key: what the completion marker records (e.g. the archive's checksum); a marker with the
            same key makes this call a no-op. Default: the archive's size.
        progress: optional callback ``(members_done, members_total)``.

    Returns:
        True if it extracted, False if a complete earlier extraction was found.

    Raises:
        PipsegError: an unreadable or unsafe archive (then nothing was written).
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise PipsegError(f"{archive}: archive not found")
    key = key or f"size:{archive.stat().st_size}"
    if is_extracted(archive, target, key):
        return False
    target.mkdir(parents=True, exist_ok=True)
    _extract(archive, target, progress)
    atomic_write_text(marker_path(archive, target), key + "\n")
    return True


def _extract(archive: Path, target: Path, progress: ExtractProgress | None) -> None:
    """Extract by format; a corrupt archive or a failing disk becomes one `PipsegError` line."""
    try:
        # A tar whose last member is a zip can look like a zip: trust the name first.
        if archive.suffix.lower() != ".zip" and tarfile.is_tarfile(archive):
            _extract_tar(archive, target, progress)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, target, progress)
        else:
            raise PipsegError(f"{archive}: not a tar or zip archive; delete it and download again")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise PipsegError(
            f"{archive}: cannot extract ({e}); delete it and download again"
        ) from None
    except OSError as e:
        raise PipsegError(
            f"{target}: extracting {archive.name} failed ({e.strerror or e}); check free space and "
            "permissions, then run the same command again (it resumes)"
        ) from None
