"""`pipseg download`: fetch the datasets, ImageNet weights and SAM checkpoints into the default
layout; say where to get the assets a script cannot fetch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from pipseg.cli._common import console, err_console, fail, user_errors

if TYPE_CHECKING:
    from pipseg.download import Asset, AssetResult, Checksum


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def _table(dest: Path, weights_dir: Path) -> Table:
    from pipseg.download import ASSETS

    table = Table(title="pipseg download: assets")
    for column in ("name", "size", "checksum", "destination", "what"):
        table.add_column(column, overflow="fold")
    for a in ASSETS.values():
        kind = "manual" if a.manual else a.checksum.kind if a.checksum else "none"
        where = a.destination(dest, weights_dir)
        what = f"{a.description}; manual: {a.manual.format(destination=where)}" if a.manual else a.description
        table.add_row(a.name, _size(a.size), kind, str(where), what)
    return table


def _report(result: AssetResult) -> None:
    name, where, f = result.asset.name, result.destination, result.fetch
    verified = f" ({result.asset.checksum.kind} verified)" if f and f.verified else ""
    if result.status == "manual":
        lines = [f"[yellow]{name}[/]: needs a browser: {result.note}"]
    elif result.status == "downloaded":
        resumed = f", resumed at {_size(f.resumed_from)}" if f.resumed_from else ""
        lines = [f"[green]{name}[/]: downloaded {_size(f.received)}{resumed}{verified} -> {f.path}"]
        if result.extracted:
            lines.append(f"[green]{name}[/]: extracted -> {where}")
    elif result.status == "extracted":
        lines = [f"[green]{name}[/]: extracted{verified} -> {where}"]
    else:
        lines = [f"{name}: already present{verified} at {where}"]
    for line in lines:  # soft wrap: paths stay whole for copy and paste
        console.print(line, soft_wrap=True, highlight=False)


def _checksum(sha256: str | None, md5: str | None) -> Checksum | None:
    from pipseg.download import Checksum

    if sha256 and md5:
        raise fail("give --sha256 or --md5, not both")
    return Checksum("sha256", sha256) if sha256 else Checksum("md5", md5) if md5 else None


def _assets_to_fetch(
    names: list[str] | None, url: str | None, sha256: str | None, md5: str | None, extract: bool
) -> list[Asset]:
    """The catalogue entries named, or the one --url asset; a usage error for a mix of both."""
    from pipseg.download import ASSETS, resolve_assets, url_asset

    if url is not None:
        if names:
            raise fail("give asset names or --url, not both")
        return [url_asset(url, checksum=_checksum(sha256, md5), extract=extract)]
    if sha256 or md5 or extract:
        raise fail("--sha256, --md5 and --extract go with --url")
    if not names:
        raise fail(f"name the assets to fetch ({', '.join(ASSETS)}) or 'all'; see --list")
    return resolve_assets(names)


def download(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Assets to fetch (see --list), or 'all'.", show_default=False),
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="Show the assets and where they go.")
    ] = False,
    dest: Annotated[
        Path, typer.Option(help="Folder for datasets (VOCdevkit/, benchmark_RELEASE/).")
    ] = Path("~/data"),
    weights_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for weight files (default: $PIPSEG_HOME/weights).", show_default=False
        ),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(envvar="PIPSEG_MIRROR", help="Base URL replacing each URL's scheme and host."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Fetch this URL into --dest instead.")] = None,
    sha256: Annotated[
        str | None, typer.Option(help="With --url: expected SHA-256 (or a prefix).")
    ] = None,
    md5: Annotated[str | None, typer.Option(help="With --url: expected MD5.")] = None,
    extract: Annotated[
        bool, typer.Option(help="With --url: extract the archive into --dest.")
    ] = False,
    retries: Annotated[int, typer.Option(min=0, help="Retries after a connection error.")] = 3,
) -> None:
    """Fetch datasets and ImageNet weights (resumable, verified)."""
    from pipseg.config import default_weights_dir

    dest = dest.expanduser()
    weights = weights_dir.expanduser() if weights_dir else default_weights_dir()
    if list_:
        console.print(_table(dest, weights))
        return
    with user_errors():
        assets = _assets_to_fetch(names, url, sha256, md5, extract)
        for asset in assets:
            if asset.manual is not None and "all" not in (names or []):
                _manual_named(asset, dest, weights)
                continue
            _report(_fetch_one(asset, dest, weights, mirror, retries))


def _manual_named(asset: Asset, dest: Path, weights: Path) -> None:
    """An asset named on the command line that only a browser can fetch: present, or its
    instructions as the one error line (exit 2)."""
    from pipseg.download import download_asset

    result = download_asset(asset, dest=dest, weights_dir=weights)
    if result.status != "manual":
        _report(result)
        return
    raise fail(f"{asset.name}: needs a browser: {result.note}")


def _fetch_one(
    asset: Asset, dest: Path, weights: Path, mirror: str | None, retries: int
) -> AssetResult:
    from pipseg.download import download_asset

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    quiet = not err_console.is_terminal  # a log file gets the result lines only
    with Progress(*columns, console=err_console, transient=True, disable=quiet) as bar:
        task = bar.add_task(asset.name, total=asset.size)

        def on_bytes(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total if total is not None else asset.size)

        def on_members(done: int, total: int) -> None:
            bar.update(task, description=f"{asset.name}: extracting {done}/{total}")

        return download_asset(
            asset, dest=dest, weights_dir=weights, mirror=mirror, retries=retries,
            progress=on_bytes, extract_progress=on_members,
        )  # fmt: skip
