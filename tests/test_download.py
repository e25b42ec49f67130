"""`vlmad download` end to end against a real HTTP server on 127.0.0.1 serving generated archives: a dropped
transfer resumed with Range, a resumed partial file from an earlier run, a checksum mismatch, unsafe members, the
VisA conversion and the offline message."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vlmad.data import load_dataset
from vlmad.data.synthetic import make_dataset
from vlmad.download import MARKER, download_dataset
from vlmad_runtime.errors import VlmadError


class ArchiveServer:
    """Serves ``files`` (name -> bytes) with Range support; ``drop_first`` cuts the first full transfer short."""

    def __init__(self, files: dict[str, bytes], drop_first: bool = False):
        self.files, self.drop_first, self.requests = files, drop_first, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                data = server.files.get(self.path.lstrip("/"))
                rng = self.headers.get("Range")
                server.requests.append(rng)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.drop_first and not rng:
                    server.drop_first = False
                    body = body[: len(body) // 3]  # the connection drops a third of the way in
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def tar_of(folder: Path, compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def serve():
    servers = []

    def start(files, drop_first=False):
        servers.append(ArchiveServer(files, drop_first))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_visa_dropped_transfer_resumes_and_is_converted(tmp_path, serve):
    raw = make_dataset(
        tmp_path / "raw", layout="visa", categories=["candle", "pcb1"], n_train=3, n_test_good=2, n_test_bad=2, size=32
    )
    data = tar_of(raw)
    server = serve({"VisA_20220922.tar": data}, drop_first=True)
    root = tmp_path / "visa"
    download_dataset("visa", root, url=f"{server.url}/VisA_20220922.tar", sha256=sha(data), log=lambda m: None)
    assert server.requests[0] is None and server.requests[1] == f"bytes={len(data) // 3}-"
    converted, original = load_dataset("visa", root), load_dataset("visa", raw)
    assert converted.layout == "converted" and original.layout == "raw"
    for cat in ("candle", "pcb1"):
        for split in ("train", "test"):
            got, want = converted.samples(cat, split), original.samples(cat, split)
            assert sorted(s.image_path.name for s in got) == sorted(s.image_path.name for s in want)
            assert sum(s.is_anomalous for s in got) == sum(s.is_anomalous for s in want)
            assert all(s.mask_path and s.mask_path.is_file() for s in got if s.is_anomalous)
    assert (root / MARKER).is_file() and not (root / ".download" / "VisA_20220922.tar").exists()


def test_partial_file_of_an_earlier_run_is_resumed_by_the_cli(tmp_path, serve):
    make_dataset(
        tmp_path / "raw", layout="mvtec", categories=["bottle"], n_train=2, n_test_good=1, n_test_bad=1, size=32
    )
    data = tar_of(tmp_path / "raw", "xz")
    server = serve({"mvtec_anomaly_detection.tar.xz": data})
    root = tmp_path / "mvtec"
    part = root / ".download" / "mvtec_anomaly_detection.tar.xz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmad",
            "download",
            "mvtec",
            "--root",
            str(root),
            "--url",
            f"{server.url}/mvtec_anomaly_detection.tar.xz",
            "--sha256",
            sha(data),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr
    assert server.requests == ["bytes=100-"]
    assert len(load_dataset("mvtec", root).samples("bottle", "test")) == 2
    again = subprocess.run(
        [sys.executable, "-m", "vlmad", "download", "mvtec", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_checksum_mismatch_is_refused_and_the_file_deleted(tmp_path, serve):
    data = tar_of(
        make_dataset(
            tmp_path / "raw", layout="mvtec", categories=["bottle"], n_train=1, n_test_good=1, n_test_bad=1, size=16
        )
    )
    server = serve({"a.tar": data})
    with pytest.raises(VlmadError, match="checksum mismatch") as err:
        download_dataset("mvtec", tmp_path / "root", url=f"{server.url}/a.tar", sha256="0" * 64, log=lambda m: None)
    assert "rerun" in err.value.hint
    assert not list((tmp_path / "root" / ".download").glob("a.tar*"))
    assert not (tmp_path / "root" / "bottle").exists()


def _evil_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        good = tarfile.TarInfo("bottle/ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo(
            {"dotdot": "bottle/../../escape.txt", "absolute": "/tmp/escape.txt", "symlink": "bottle/link"}[kind]
        )
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../../etc"
            tar.addfile(bad)
        else:
            bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_members_escaping_the_root_are_refused_before_anything_is_written(tmp_path, serve, kind):
    data = _evil_tar(kind)
    server = serve({"x.tar": data})
    root = tmp_path / "a" / "root"
    with pytest.raises(VlmadError, match="unsafe archive member"):
        download_dataset("mvtec", root, url=f"{server.url}/x.tar", sha256=sha(data), log=lambda m: None)
    assert not (tmp_path / "a" / "escape.txt").exists() and not (root / "bottle").exists()
    assert not (root / MARKER).exists()


def test_offline_says_so(tmp_path, serve):
    server = serve({})
    port = server.httpd.server_address[1]
    server.close()
    with pytest.raises(VlmadError, match="cannot reach") as err:
        download_dataset("visa", tmp_path, url=f"http://127.0.0.1:{port}/v.tar", sha256="0" * 64, log=lambda m: None)
    assert "network" in err.value.hint


def test_an_archive_placed_by_hand_is_verified_and_unpacked_without_network(tmp_path):
    make_dataset(
        tmp_path / "raw", layout="mvtec", categories=["bottle"], n_train=1, n_test_good=1, n_test_bad=1, size=16
    )
    data = tar_of(tmp_path / "raw")
    root = tmp_path / "root"
    (root / ".download").mkdir(parents=True)
    (root / ".download" / "m.tar").write_bytes(data)
    download_dataset("mvtec", root, url="http://127.0.0.1:9/m.tar", sha256=sha(data), log=lambda m: None)
    assert len(load_dataset("mvtec", root).samples("bottle", "test")) == 2
