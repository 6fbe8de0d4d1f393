"""`pipseg download`: resumable, verified fetches and safe extraction, against a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from pipseg.cli import app
from pipseg.config import default_weights_dir
from pipseg.download import (
    ASSETS,
    Checksum,
    ChecksumError,
    apply_mirror,
    catalogue,
    download_asset,
    extract_archive,
    fetch,
    marker_path,
    resolve_assets,
)
from pipseg.errors import PipsegError

runner = CliRunner()


# --------------------------------------------------------------------------- local server


@dataclass
class ServerState:
    """What the server serves and how it misbehaves; every request is logged."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    cut_once: int | None = None  # the next response closes after this many body bytes
    log: list[dict] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        entry = {"path": urlsplit(self.path).path, "range": self.headers.get("Range"), "sent": 0}
        state.log.append(entry)
        body = state.files.get(entry["path"])
        if body is None:
            entry["status"] = 404
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        entry["status"] = 206 if start else 200
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        n = len(payload) if state.cut_once is None else min(state.cut_once, len(payload))
        state.cut_once = None
        entry["sent"] = n  # logged first: the client may check the log as soon as it has the bytes
        self.wfile.write(payload[:n])
        self.close_connection = True


@dataclass
class Server:
    state: ServerState
    base: str

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server():
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Server(state, f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- generated files


def _payload(n: int, seed: int = 0) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _evil_tar(kind: str, outside: Path) -> bytes:
    """A tar whose first member is harmless and whose second escapes in the way ``kind`` says."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ok = tarfile.TarInfo("safe.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(
            {"dotdot": "../evil", "absolute": str(outside / "evil")}.get(kind, "link")
        )
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../evil"
        elif kind == "symlink_abs":
            info.type, info.linkname = tarfile.SYMTYPE, str(outside / "evil")
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "../evil"
        else:
            info.size = 4
        tf.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
        if kind.startswith("symlink"):  # then a file written through the link
            through = tarfile.TarInfo("link/evil")
            through.size = 4
            tf.addfile(through, io.BytesIO(b"evil"))
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# --------------------------------------------------------------------------- catalogue via --mirror

VOC_TAR = {
    "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": _payload(3000, 1),
    "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"2007_000032\n",
}
SBD_TGZ = {"benchmark_RELEASE/dataset/train.txt": b"2008_000002\n"}


@pytest.fixture
def fake_catalogue(server, monkeypatch):
    """Serve small stand-ins at the catalogue's URL paths and make the catalogue expect them."""
    voc, sbd, vgg = _tar(VOC_TAR), _tar(SBD_TGZ, "w:gz"), _payload(50_000, 2)
    for name, data, checksum in (
        ("voc2012", voc, Checksum("md5", _md5(voc))),
        ("sbd", sbd, Checksum("md5", _md5(sbd))),
        ("vgg16", vgg, Checksum("sha256", _sha256(vgg)[:8])),
    ):
        asset = ASSETS[name]
        server.state.files[urlsplit(asset.urls[0]).path] = data
        monkeypatch.setitem(catalogue.ASSETS, name, replace(asset, checksum=checksum, size=len(data)))
    return {"voc2012": voc, "sbd": sbd, "vgg16": vgg}


def test_catalogue_download_with_mirror_then_skip(server, fake_catalogue, tmp_path):
    dest, weights = tmp_path / "data", tmp_path / "weights"
    args = ["download", "voc2012", "sbd", "vgg16", "--dest", str(dest)]
    args += ["--weights-dir", str(weights), "--mirror", server.base]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    voc_root = dest / "VOCdevkit" / "VOC2012"
    for name, data in VOC_TAR.items():
        assert (dest / name).read_bytes() == data
    assert (voc_root / "ImageSets" / "Segmentation" / "val.txt").is_file()
    assert (dest / "benchmark_RELEASE" / "dataset" / "train.txt").read_bytes() == b"2008_000002\n"
    assert (weights / "vgg16-397923af.pth").read_bytes() == fake_catalogue["vgg16"]
    assert not list(tmp_path.rglob("*.part"))
    assert [e["status"] for e in server.state.log] == [200, 200, 200]

    # Second run: nothing fetched, nothing extracted, even with the archives deleted.
    (dest / "VOCtrainval_11-May-2012.tar").unlink()
    (voc_root / "JPEGImages" / "2007_000032.jpg").unlink()  # would come back if re-extracted
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("already present") == 3
    assert len(server.state.log) == 3
    assert not (voc_root / "JPEGImages" / "2007_000032.jpg").exists()


def test_default_weights_dir_and_env_mirror(server, fake_catalogue, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPSEG_MIRROR", server.base)
    result = runner.invoke(app, ["download", "vgg16", "--dest", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    weight_file = default_weights_dir() / "vgg16-397923af.pth"
    assert weight_file == tmp_path / "home" / "weights" / "vgg16-397923af.pth"
    assert weight_file.read_bytes() == fake_catalogue["vgg16"]


def test_all_fetches_everything_and_explains_manual_assets(
    server, fake_catalogue, tmp_path, monkeypatch
):
    vgg = ASSETS["vgg16"]  # serve the stand-in weights for resnet101 too
    monkeypatch.setitem(
        catalogue.ASSETS,
        "resnet101",
        replace(ASSETS["resnet101"], urls=vgg.urls, checksum=vgg.checksum),
    )
    args = ["download", "all", "--dest", str(tmp_path), "--weights-dir", str(tmp_path / "w")]
    result = runner.invoke(app, [*args, "--mirror", server.base])
    assert result.exit_code == 0, result.output
    assert "liangchiehchen.com" in result.output and "SegmentationClassBboxCRF" in result.output
    assert "VOC12_M&G+" in result.output
    assert (tmp_path / "w" / "resnet101-63fe2227.pth").is_file()


def test_fetch_by_url_with_extract(server, tmp_path):
    data = _tar({"pkg/a.txt": b"alpha", "pkg/sub/b.bin": _payload(70_000, 3)}, "w:gz")
    server.state.files["/x/pkg.tar.gz"] = data
    args = ["download", "--url", server.url("/x/pkg.tar.gz"), "--sha256", _sha256(data)]
    result = runner.invoke(app, [*args, "--extract", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pkg.tar.gz").read_bytes() == data
    assert (tmp_path / "pkg" / "a.txt").read_bytes() == b"alpha"
    assert (
        marker_path(tmp_path / "pkg.tar.gz", tmp_path).read_text().strip()
        == f"sha256:{_sha256(data)}"
    )


def test_mirror_replaces_scheme_and_host_only():
    url = "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert (
        apply_mirror(url, "http://127.0.0.1:8000")
        == "http://127.0.0.1:8000/models/vgg16-397923af.pth"
    )
    assert apply_mirror(url, "http://m:1/pub/") == "http://m:1/pub/models/vgg16-397923af.pth"
    assert apply_mirror(url, None) == url
    with pytest.raises(PipsegError, match="--mirror"):
        apply_mirror(url, "127.0.0.1:8000")


# --------------------------------------------------------------------------- resume, retry, verify


def test_cut_transfer_resumes_with_exactly_the_missing_bytes(server, tmp_path):
    body = _payload(200_000, 4)
    server.state.files["/w.bin"] = body
    server.state.cut_once = 70_001
    target = tmp_path / "w.bin"
    with pytest.raises(PipsegError, match=r"70001 of 200000 bytes.*run again to resume"):
        fetch(server.url("/w.bin"), target, checksum=Checksum("sha256", _sha256(body)), retries=0)
    assert not target.exists()
    assert (tmp_path / "w.bin.part").stat().st_size == 70_001

    result = fetch(
        server.url("/w.bin"), target, checksum=Checksum("sha256", _sha256(body)), retries=0
    )
    second = server.state.log[-1]
    assert second["range"] == "bytes=70001-" and second["status"] == 206
    assert second["sent"] == len(body) - 70_001 == result.received
    assert result.resumed_from == 70_001 and result.verified
    assert target.read_bytes() == body
    assert not (tmp_path / "w.bin.part").exists()


def test_retry_resumes_within_one_call(server, tmp_path):
    body = _payload(120_000, 5)
    server.state.files["/w.bin"] = body
    server.state.cut_once = 50_000
    seen = []
    result = fetch(
        server.url("/w.bin"), tmp_path / "w.bin", checksum=Checksum("md5", _md5(body)),
        retries=2, backoff=0, progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert [e["sent"] for e in server.state.log] == [50_000, 70_000]
    assert server.state.log[1]["range"] == "bytes=50000-"
    assert (tmp_path / "w.bin").read_bytes() == body and result.received == len(body)
    assert seen[-1] == (len(body), len(body))


def test_checksum_mismatch_deletes_the_file(server, tmp_path):
    server.state.files["/w.bin"] = _payload(10_000, 6)
    wrong = Checksum("md5", _md5(b"something else"))
    with pytest.raises(ChecksumError, match=r"md5 is [0-9a-f]{32}, expected .*deleted"):
        fetch(server.url("/w.bin"), tmp_path / "w.bin", checksum=wrong, retries=0)
    assert list(tmp_path.iterdir()) == []

    args = [
        "download",
        "--url",
        server.url("/w.bin"),
        "--md5",
        wrong.hexdigest,
        "--dest",
        str(tmp_path),
    ]
    result = runner.invoke(app, args)
    assert (
        result.exit_code == 2 and "expected" in result.output and "Traceback" not in result.output
    )
    assert list(tmp_path.iterdir()) == []


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = _payload(30_000, 7)
    server.state.files["/w.bin"] = body
    server.state.ignore_range = True
    (tmp_path / "w.bin.part").write_bytes(
        b"x" * 9_999
    )  # wrong bytes: appending would fail the check
    result = fetch(
        server.url("/w.bin"), tmp_path / "w.bin", checksum=Checksum("sha256", _sha256(body))
    )
    assert server.state.log[0]["range"] == "bytes=9999-" and server.state.log[0]["status"] == 200
    assert (tmp_path / "w.bin").read_bytes() == body
    assert result.resumed_from == 0 and result.received == len(body)


def test_complete_part_file_answered_416_is_kept(server, tmp_path):
    body = _payload(5_000, 8)
    server.state.files["/w.bin"] = body
    (tmp_path / "w.bin.part").write_bytes(body)
    result = fetch(
        server.url("/w.bin"), tmp_path / "w.bin", checksum=Checksum("sha256", _sha256(body)[:8])
    )
    assert server.state.log[0]["status"] == 416 and result.received == 0
    assert (tmp_path / "w.bin").read_bytes() == body


def test_present_file_is_verified_and_skipped(server, tmp_path):
    body = _payload(1_000, 9)
    (tmp_path / "w.bin").write_bytes(body)
    result = fetch(server.url("/w.bin"), tmp_path / "w.bin", checksum=Checksum("md5", _md5(body)))
    assert result.status == "present" and result.verified and server.state.log == []
    with pytest.raises(ChecksumError, match="already there"):
        fetch(server.url("/w.bin"), tmp_path / "w.bin", checksum=Checksum("md5", _md5(b"other")))
    assert (tmp_path / "w.bin").exists()  # a file we did not download is never deleted


def test_checksum_values_are_checked():
    assert Checksum("sha256", "397923AF").kind == "sha256 prefix"
    assert Checksum("md5", "6cd6e144f989b92b3379bac3b3de84fd").kind == "md5"
    for algorithm, value in (("md5", "abc"), ("sha256", "xyz12345"), ("sha256", "1234567")):
        with pytest.raises(PipsegError):
            Checksum(algorithm, value)


# --------------------------------------------------------------------------- HTTP and network errors


def test_http_404_is_one_clear_line(server, tmp_path):
    url = server.url("/nothing/here.tar")
    result = runner.invoke(app, ["download", "--url", url, "--dest", str(tmp_path)])
    assert result.exit_code == 2
    assert url in result.output and "HTTP 404" in result.output
    assert "Traceback" not in result.output
    assert len(server.state.log) == 1  # a 404 is not retried


def test_connection_refused_names_the_url(closed_port, tmp_path):
    url = f"http://127.0.0.1:{closed_port}/w.bin"
    result = runner.invoke(
        app, ["download", "--url", url, "--dest", str(tmp_path), "--retries", "0"]
    )
    assert result.exit_code == 2, result.output
    assert url in result.output and "by hand" in result.output and "Traceback" not in result.output
    with pytest.raises(PipsegError, match=r"after 3 attempt\(s\).*put it at"):
        fetch(url, tmp_path / "w.bin", retries=2, backoff=0)


# --------------------------------------------------------------------------- archives


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlink_abs", "hardlink"])
def test_unsafe_tar_is_refused_and_writes_nothing(kind, tmp_path):
    outside, target = tmp_path / "outside", tmp_path / "target"
    outside.mkdir()
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_evil_tar(kind, outside))
    with pytest.raises(PipsegError, match="evil.tar: member .*nothing was extracted"):
        extract_archive(archive, target)
    assert _tree(target) == set()  # not even the harmless first member
    assert _tree(outside) == set() and not (tmp_path / "evil").exists()


def test_unsafe_zip_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr("../evil", b"evil")
    (tmp_path / "evil.zip").write_bytes(buf.getvalue())
    with pytest.raises(PipsegError, match="'..' component"):
        extract_archive(tmp_path / "evil.zip", tmp_path / "target")
    assert _tree(tmp_path / "target") == set() and not (tmp_path / "evil").exists()


def test_unsafe_archive_via_cli(server, tmp_path):
    server.state.files["/evil.tar"] = _evil_tar("dotdot", tmp_path)
    dest = tmp_path / "dest"
    args = ["download", "--url", server.url("/evil.tar"), "--extract", "--dest", str(dest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "'..' component" in result.output
    assert _tree(dest) == {"evil.tar"} and not (tmp_path / "evil").exists()


def test_extraction_is_skipped_when_complete_and_resumed_when_not(tmp_path):
    members = {"d/a.bin": _payload(4_000, 10), "d/b.bin": _payload(5_000, 11)}
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    target = tmp_path / "t"
    assert extract_archive(archive, target, key="k1") is True
    assert extract_archive(archive, target, key="k1") is False  # marker says complete
    (target / "d" / "a.bin").unlink()
    assert extract_archive(archive, target, key="k1") is False
    assert not (target / "d" / "a.bin").exists()

    # An interrupted run (no marker, one file cut short): only the unfinished file is redone.
    marker_path(archive, target).unlink()
    (target / "d" / "a.bin").write_bytes(members["d/a.bin"][:100])
    os.utime(target / "d" / "b.bin", ns=(1, 1))
    assert extract_archive(archive, target, key="k1") is True
    assert (target / "d" / "a.bin").read_bytes() == members["d/a.bin"]
    assert (target / "d" / "b.bin").stat().st_mtime_ns == 1


def test_tar_extraction_resumes_too(tmp_path):
    archive = tmp_path / "x.tgz"
    archive.write_bytes(_tar({"d/a.bin": _payload(4_000, 12), "d/b.bin": b"bee"}, "w:gz"))
    target = tmp_path / "t"
    assert extract_archive(archive, target) is True
    marker_path(archive, target).unlink()
    (target / "d" / "a.bin").write_bytes(b"cut")
    os.utime(target / "d" / "b.bin", ns=(5, 5))  # tarfile would reset it if it rewrote b.bin
    assert extract_archive(archive, target) is True
    assert (target / "d" / "a.bin").read_bytes() == _payload(4_000, 12)
    assert (target / "d" / "b.bin").stat().st_mtime_ns == 5


# --------------------------------------------------------------------------- listing and names


def test_list_names_every_asset(tmp_path):
    result = runner.invoke(app, ["download", "--list", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("voc2012", "sbd", "wssl", "sdi", "vgg16", "resnet101"):
        assert name in result.output
    assert "sha256 prefix" in result.output and "md5" in result.output and "manual" in result.output


def test_unknown_asset_lists_known_names(tmp_path):
    result = runner.invoke(app, ["download", "voc2013", "--dest", str(tmp_path)])
    assert result.exit_code == 2
    assert "voc2013" in result.output and "voc2012" in result.output and "vgg16" in result.output


def test_manual_asset_present_is_reported(tmp_path):
    labels = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClassBboxCRF"
    labels.mkdir(parents=True)
    (labels / "2007_000032.png").write_bytes(b"png")
    result = download_asset(ASSETS["wssl"], dest=tmp_path)
    assert result.status == "present" and result.destination == labels
    assert download_asset(ASSETS["sdi"], dest=tmp_path).status == "manual"


def test_default_layout_is_where_train_and_config_look(tmp_path):
    from pipseg.config import DataConfig
    from pipseg.models import imagenet_weight_file

    weights = default_weights_dir()
    assert ASSETS["vgg16"].destination(Path("~/data"), weights) == weights / imagenet_weight_file(
        "vgg16_largefov"
    )
    assert ASSETS["resnet101"].filename == imagenet_weight_file("deeplabv2_resnet101")
    voc = ASSETS["voc2012"].destination(Path("~/data").expanduser(), weights)
    assert voc == DataConfig().root.expanduser()


# ----------------------------------------------------------------- SAM checkpoints, authors' init


def test_sam_checkpoint_fetched_resumably_and_verified_by_sha256(server, tmp_path, monkeypatch):
    data = _payload(120_000, 5)
    asset = ASSETS["sam-vit-b"]
    assert asset.urls == ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",)
    assert asset.checksum.algorithm == "sha256" and len(asset.checksum.hexdigest) == 64
    server.state.files[urlsplit(asset.urls[0]).path] = data
    weights = tmp_path / "w"
    (weights).mkdir()
    (weights / "sam_vit_b_01ec64.pth.part").write_bytes(data[:50_000])  # an interrupted fetch
    monkeypatch.setitem(catalogue.ASSETS, "sam-vit-b",
                        replace(asset, checksum=Checksum("sha256", _sha256(data)), size=len(data)))
    args = ["download", "sam-vit-b", "--weights-dir", str(weights), "--mirror", server.base]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (weights / "sam_vit_b_01ec64.pth").read_bytes() == data
    assert "sha256 verified" in result.output and "resumed" in result.output
    # A file that is not the published one is refused.
    (weights / "sam_vit_b_01ec64.pth").unlink()
    monkeypatch.setitem(catalogue.ASSETS, "sam-vit-b",
                        replace(asset, checksum=Checksum("sha256", "0" * 64), size=len(data)))
    assert runner.invoke(app, args).exit_code == 2
    assert not (weights / "sam_vit_b_01ec64.pth").exists()


def test_sam_checkpoints_are_listed_but_not_in_all():
    names = {a.name for a in resolve_assets(["all"])}
    for kind, file in (("b", "sam_vit_b_01ec64.pth"), ("l", "sam_vit_l_0b3195.pth"),
                       ("h", "sam_vit_h_4b8939.pth")):  # fmt: skip
        asset = ASSETS[f"sam-vit-{kind}"]
        assert asset.filename == file and asset.location == "weights" and asset.name not in names
    assert "deeplab-init" in names


def test_deeplab_init_is_manual_with_where_to_get_it(tmp_path):
    weights = tmp_path / "w"
    from pipseg.cli.download_cmd import _table

    assert runner.invoke(app, ["download", "--list", "--weights-dir", str(weights)]).exit_code == 0
    table = _table(tmp_path, weights)  # the --list table, read by cell (the terminal folds them)
    rows = dict(zip(table.columns[0]._cells, table.columns[4]._cells, strict=True))
    assert {"sam-vit-b", "sam-vit-l", "sam-vit-h"} <= set(rows)
    assert "manual: get it from https://github.com/wangleihitcs/DeepLab-V1-PyTorch" in rows["deeplab-init"]
    assert rows["deeplab-init"].endswith(f"save it as {weights / 'deeplab_largeFOV.pth'}")

    result = runner.invoke(app, ["download", "deeplab-init", "--weights-dir", str(weights)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "DeepLab-V1-PyTorch" in lines[0]
    assert f"save it as {weights / 'deeplab_largeFOV.pth'}" in lines[0]
    weights.mkdir()
    (weights / "deeplab_largeFOV.pth").write_bytes(b"weights")
    again = runner.invoke(app, ["download", "deeplab-init", "--weights-dir", str(weights)])
    assert again.exit_code == 0 and "already present" in again.output
