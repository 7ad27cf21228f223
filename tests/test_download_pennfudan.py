"""Tests of data_scripts/download_pennfudan.py (and _download.py) without the internet.

A fake Penn-Fudan zip (tests/fixtures/pennfudan/fake_pennfudan.py) is served by a small HTTP
server on 127.0.0.1 that can honour or ignore Range requests, cut a transfer short or answer an
error. ``main()`` runs in this process with the expected checksum patched to the fake's.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pennfudan"
SCRIPT = ROOT / "data_scripts" / "download_pennfudan.py"


@pytest.fixture(scope="module")
def modules():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "data_scripts"))
        mp.syspath_prepend(str(FIXTURES))
        yield (importlib.import_module("download_pennfudan"), importlib.import_module("_download"),
               importlib.import_module("fake_pennfudan"))


@pytest.fixture(scope="module")
def zip_bytes(modules) -> bytes:
    return modules[2].fake_zip_bytes()


@pytest.fixture
def dl(modules, zip_bytes, monkeypatch):
    """The script module, expecting the fake zip's MD5."""
    script = modules[0]
    monkeypatch.setattr(script, "KNOWN_HASH", "md5:" + hashlib.md5(zip_bytes).hexdigest())
    return script


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
        fake = self.server.fake
        fake.ranges.append(self.headers.get("Range"))
        if fake.status is not None or self.path != "/PennFudanPed.zip":
            self.send_error(fake.status or 404)
            return
        data, start = fake.data, 0
        wanted = self.headers.get("Range")
        if wanted and fake.honour_range:  # "bytes=START-"
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = body if fake.cut_after is None else body[:fake.cut_after]
        # counted before writing: once the client has the bytes, the count is in (counting
        # after the write let this thread add to the next test's count on a busy machine)
        fake.sent += len(sent)
        self.wfile.write(sent)
        if fake.cut_after is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


class FakeServer:
    """What the handler serves; tests change the attributes between runs."""

    def __init__(self, data: bytes, port: int):
        self.url = f"http://127.0.0.1:{port}/PennFudanPed.zip"
        self.reset(data)

    def reset(self, data: bytes) -> None:
        self.data = data
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many body bytes, then hang up
        self.status: int | None = None     # answer this HTTP error instead
        self.ranges: list[str | None] = []  # the Range header of each request
        self.sent = 0                       # body bytes sent in all


@pytest.fixture(scope="module")
def httpd(zip_bytes):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.fake = FakeServer(zip_bytes, httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(httpd, zip_bytes) -> FakeServer:
    httpd.fake.reset(zip_bytes)
    return httpd.fake


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/PennFudanPed.zip"  # nothing listens there now


def run(dl, dest: Path, url: str, *extra: str, opener=None) -> int:
    return dl.main(["--dest", str(dest), "--url", url, "--quiet", *extra], opener=opener)


def assert_friendly_failure(err: str, *phrases: str) -> None:
    assert err.startswith("error: ")
    assert "every lesson runs on synthetic data without it" in " ".join(err.split())
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in " ".join(err.split()), (phrase, err)


# ----------------------------------------------------------------------------- success

def test_download_extract_and_load(dl, server, tmp_path, capsys, zip_bytes):
    dest = tmp_path / "data" / "PennFudanPed"
    assert dl.main(["--dest", str(dest), "--url", server.url]) == 0   # with the progress bar
    out, err = capsys.readouterr()
    assert "PennFudanPed.zip" in err and "100%" in err                # tqdm, on stderr
    assert f"ready in {dest}: 4 images, 4 masks (MD5 checked)" in out
    assert server.ranges == [None] and server.sent == len(zip_bytes)

    archive = tmp_path / "data" / "PennFudanPed.zip"
    assert archive.read_bytes() == zip_bytes                          # kept beside the folder
    assert not archive.with_name("PennFudanPed.zip.part").exists()
    assert sorted(p.name for p in dest.iterdir()) == [
        ".download.json", "Annotation", "PNGImages", "PedMasks", "added-object-list.txt",
        "readme.txt"]
    assert [p.name for p in tmp_path.joinpath("data").iterdir() if p.name.startswith(".")] == []

    from course_lib.data.datasets import PennFudanDataset
    image, target = PennFudanDataset(dest)[0]
    assert image.shape[0] == 3 and target["boxes"].shape == (2, 4)


def test_second_run_does_nothing(dl, server, tmp_path, capsys):
    dest = tmp_path / "PennFudanPed"
    assert run(dl, dest, server.url) == 0
    stamp = (dest / "PNGImages").stat().st_mtime_ns
    assert run(dl, dest, server.url) == 0
    assert "already in" in capsys.readouterr().out
    assert len(server.ranges) == 1 and (dest / "PNGImages").stat().st_mtime_ns == stamp


def test_damaged_folder_is_extracted_again_from_the_kept_zip(dl, server, tmp_path):
    dest = tmp_path / "PennFudanPed"
    assert run(dl, dest, server.url) == 0
    (dest / "PedMasks" / "PennPed00001_mask.png").unlink()
    assert run(dl, dest, server.url) == 0
    assert (dest / "PedMasks" / "PennPed00001_mask.png").is_file()
    assert len(server.ranges) == 1                                    # no second download


def test_zip_saved_by_hand_is_used_offline(dl, tmp_path, zip_bytes, closed_port_url):
    (tmp_path / "PennFudanPed.zip").write_bytes(zip_bytes)
    assert run(dl, tmp_path / "PennFudanPed", closed_port_url) == 0
    assert (tmp_path / "PennFudanPed" / "PNGImages" / "FudanPed00001.png").is_file()


def test_leftover_of_an_earlier_extraction_is_replaced(dl, server, tmp_path):
    dest = tmp_path / "PennFudanPed"
    (dest / "PNGImages").mkdir(parents=True)
    (dest / "PNGImages" / "half-written.png").write_bytes(b"...")
    assert run(dl, dest, server.url) == 0
    assert not (dest / "PNGImages" / "half-written.png").exists()
    assert len(list((dest / "PNGImages").iterdir())) == 4


def test_folder_with_other_files_is_left_alone(dl, server, tmp_path, capsys):
    dest = tmp_path / "PennFudanPed"
    dest.mkdir()
    (dest / "my_notes.txt").write_text("mine")
    assert run(dl, dest, server.url) == 1
    assert_friendly_failure(capsys.readouterr().err, "holds files that are not from",
                            "'my_notes.txt'")
    assert (dest / "my_notes.txt").read_text() == "mine" and not (dest / "PNGImages").exists()


# ----------------------------------------------------------------------------- resume

def test_resume_asks_for_the_rest_only(dl, server, tmp_path, zip_bytes):
    (tmp_path / "PennFudanPed.zip.part").write_bytes(zip_bytes[:5000])
    assert run(dl, tmp_path / "PennFudanPed", server.url) == 0
    assert server.ranges == ["bytes=5000-"] and server.sent == len(zip_bytes) - 5000
    assert (tmp_path / "PennFudanPed.zip").read_bytes() == zip_bytes


def test_server_that_ignores_range_restarts_from_zero(dl, server, tmp_path, zip_bytes):
    server.honour_range = False
    (tmp_path / "PennFudanPed.zip.part").write_bytes(b"x" * 5000)  # would spoil an append
    assert run(dl, tmp_path / "PennFudanPed", server.url) == 0
    assert server.ranges == ["bytes=5000-"] and server.sent == len(zip_bytes)
    assert (tmp_path / "PennFudanPed.zip").read_bytes() == zip_bytes


def test_complete_partial_file_answered_416_is_accepted(dl, server, tmp_path, zip_bytes):
    (tmp_path / "PennFudanPed.zip.part").write_bytes(zip_bytes)
    assert run(dl, tmp_path / "PennFudanPed", server.url) == 0
    assert server.ranges == [f"bytes={len(zip_bytes)}-"] and server.sent == 0


def test_interrupted_download_fails_then_resumes(dl, server, tmp_path, zip_bytes, capsys):
    half = len(zip_bytes) // 2
    server.cut_after = half
    dest = tmp_path / "PennFudanPed"
    assert run(dl, dest, server.url) == 1
    assert_friendly_failure(capsys.readouterr().err, "stopped after", "it resumes where it stopped")
    assert (tmp_path / "PennFudanPed.zip.part").stat().st_size == half
    assert not dest.exists()

    server.cut_after = None
    assert run(dl, dest, server.url) == 0
    assert server.ranges == [None, f"bytes={half}-"]
    assert (tmp_path / "PennFudanPed.zip").read_bytes() == zip_bytes


def test_timeout_while_reading_keeps_the_partial_file(dl, tmp_path, capsys, zip_bytes):
    class StallingResponse:  # sends 1000 bytes, then the socket times out
        status = 200
        headers = {"Content-Length": str(len(zip_bytes))}
        chunks = [zip_bytes[:1000]]

        def read(self, size):
            if self.chunks:
                return self.chunks.pop()
            raise TimeoutError("timed out")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    assert run(dl, tmp_path / "PennFudanPed", "https://www.cis.upenn.edu/x.zip",
               opener=lambda request, timeout: StallingResponse()) == 1
    assert_friendly_failure(capsys.readouterr().err, "stopped after 0.0 MiB: timed out")
    assert (tmp_path / "PennFudanPed.zip.part").read_bytes() == zip_bytes[:1000]


# ----------------------------------------------------------------------------- bad files

def test_wrong_checksum_moves_the_file_aside(dl, server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dl, "KNOWN_HASH", "md5:" + "0" * 32)
    dest = tmp_path / "PennFudanPed"
    assert run(dl, dest, server.url) == 1
    err = capsys.readouterr().err
    assert_friendly_failure(err, "wrong md5 checksum: expected 00000000", "Run this script again",
                            "--no-verify")
    assert (tmp_path / "PennFudanPed.zip.bad").exists()
    assert not (tmp_path / "PennFudanPed.zip").exists() and not dest.exists()
    assert not (tmp_path / "PennFudanPed.zip.part").exists()        # a rerun starts afresh

    assert run(dl, dest, server.url, "--no-verify") == 0             # accepted unchecked
    assert server.ranges == [None, None]


def test_existing_zip_with_wrong_checksum_is_fetched_again(dl, server, tmp_path, capsys):
    (tmp_path / "PennFudanPed.zip").write_bytes(b"an old or broken copy")
    assert run(dl, tmp_path / "PennFudanPed", server.url) == 0
    assert "moved it to" in capsys.readouterr().err
    assert (tmp_path / "PennFudanPed.zip.bad").read_bytes() == b"an old or broken copy"


def test_not_a_zip_is_moved_aside_and_refetched(dl, server, tmp_path, capsys, zip_bytes):
    server.data = b"<html>Service temporarily unavailable</html>"
    dest = tmp_path / "PennFudanPed"
    assert run(dl, dest, server.url, "--no-verify") == 1
    assert_friendly_failure(capsys.readouterr().err, "is not a valid zip file",
                            "moved to", "Run this script again to download it afresh")
    assert (tmp_path / "PennFudanPed.zip.bad").exists()
    assert not (tmp_path / "PennFudanPed.zip").exists() and not dest.exists()

    server.data = zip_bytes
    assert run(dl, dest, server.url, "--no-verify") == 0


def test_bad_crc_is_reported_with_the_member(dl, server, tmp_path, capsys, modules):
    data = modules[2].fake_zip_bytes(compression=zipfile.ZIP_STORED)
    assert data.count(b"Directory structure") == 1
    server.data = data.replace(b"Directory structure", b"Directory STRUCTURE")
    assert run(dl, tmp_path / "PennFudanPed", server.url, "--no-verify") == 1
    assert_friendly_failure(capsys.readouterr().err,
                            "PennFudanPed/readme.txt fails its CRC check")
    assert not (tmp_path / "PennFudanPed").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["PennFudanPed.zip.bad"]  # no temp folder


def test_zip_without_the_dataset_folder_is_refused(dl, server, tmp_path, capsys):
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("something_else/readme.txt", "hello")
    server.data = buf.getvalue()
    assert run(dl, tmp_path / "PennFudanPed", server.url, "--no-verify") == 1
    assert_friendly_failure(capsys.readouterr().err, "has no PennFudanPed/ folder")


# ----------------------------------------------------------------------------- no network

def test_unreachable_host(dl, tmp_path, capsys, closed_port_url):
    assert run(dl, tmp_path / "PennFudanPed", closed_port_url) == 1
    err = capsys.readouterr().err
    assert_friendly_failure(err, "could not reach 127.0.0.1:", "Check your network connection",
                            f"save it as {tmp_path / 'PennFudanPed.zip'}")
    assert list(tmp_path.iterdir()) == []                            # nothing left behind


def test_offline_message_names_the_real_host(dl, tmp_path, capsys):
    def offline(request, timeout):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    assert dl.main(["--dest", str(tmp_path / "PennFudanPed")], opener=offline) == 1
    assert_friendly_failure(capsys.readouterr().err, "could not reach www.cis.upenn.edu: "
                            "[Errno -3] Temporary failure in name resolution")


def test_untrusted_certificate(dl, tmp_path, capsys):
    def bad_certificate(request, timeout):
        raise urllib.error.URLError(ssl.SSLCertVerificationError(1, "certificate verify failed"))

    assert dl.main(["--dest", str(tmp_path / "P")], opener=bad_certificate) == 1
    assert_friendly_failure(capsys.readouterr().err, "could not verify the certificate of "
                            "www.cis.upenn.edu", "Install Certificates.command")


def test_http_error(dl, server, tmp_path, capsys):
    server.status = 404
    assert run(dl, tmp_path / "PennFudanPed", server.url) == 1
    assert_friendly_failure(capsys.readouterr().err, "127.0.0.1 answered HTTP 404")


def test_ctrl_c_says_how_to_resume(dl, tmp_path, capsys):
    def interrupted(request, timeout):
        raise KeyboardInterrupt

    assert dl.main(["--dest", str(tmp_path / "P")], opener=interrupted) == 130
    assert "run this script again to resume" in capsys.readouterr().err


# ----------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("argv", [["--bogus"], ["--url", "ftp://example.org/x.zip"]])
def test_usage_errors_exit_2(dl, argv):
    with pytest.raises(SystemExit) as info:
        dl.main(argv)
    assert info.value.code == 2


def test_default_destination(dl, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert dl.default_dest() == tmp_path / "PennFudanPed"
    monkeypatch.delenv("COURSE_DATA_DIR")
    assert dl.default_dest() == ROOT / "data" / "PennFudanPed"


def test_known_hash_format(modules):
    _download = modules[1]
    assert _download.parse_hash("MD5:AB".replace("MD5", "md5")) == ("md5", "ab")
    with pytest.raises(ValueError, match="md5:<hex>"):
        _download.parse_hash("crc32:1234")


def test_script_runs_standalone(tmp_path, closed_port_url):
    env = {**os.environ, "COURSE_DATA_DIR": str(tmp_path)}
    usage = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert usage.returncode == 0 and "usage: download_pennfudan.py" in usage.stdout
    failed = subprocess.run([sys.executable, str(SCRIPT), "--url", closed_port_url],
                            capture_output=True, text=True, env=env, timeout=60)
    assert failed.returncode == 1 and failed.stdout == ""
    assert_friendly_failure(failed.stderr, "could not reach 127.0.0.1")
