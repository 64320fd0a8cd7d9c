"""Downloader and `edgebind download` against a local HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import random
import re
import socket
import threading
import urllib.error
from pathlib import Path

import pytest

from edgebind.cli import main as cli_main
from edgebind.errors import ConfigError, DownloadError
from edgebind.models import download as dl

PAYLOAD = random.Random(1234).randbytes(300_000)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"progress": False, "timeout": 5, "backoff": 0.0}


class _FileServer(http.server.ThreadingHTTPServer):
    """Serves PAYLOAD at any path but /missing, with byte-range support and injectable faults."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, str | None]] = []
        self.cut_after: int | None = None  # drop the connection after this many body bytes, once
        self.ignore_range = False

    def url(self, path: str = "/imagebind_tiny.pth") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _FileServer

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        requested = self.headers.get("Range")
        srv.requests.append({"path": self.path, "range": requested})
        if self.path == "/missing":
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            body, srv.cut_after = body[: srv.cut_after], None
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees EOF before Content-Length
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = _FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_plain_download(server, tmp_path):
    dest = tmp_path / "sub" / "w.pth"
    out = dl.download(server.url(), dest, **FAST)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("w.pth.part").exists()
    assert server.requests == [{"path": "/imagebind_tiny.pth", "range": None}]


def test_interrupted_transfer_resumes_with_range_on_the_next_call(server, tmp_path):
    dest = tmp_path / "w.pth"
    server.cut_after = 100_000
    with pytest.raises(DownloadError, match=r"failed after 0 retries.*100000 bytes kept") as exc:
        dl.download(server.url(), dest, retries=0, **FAST)
    assert server.url() in str(exc.value)
    assert not dest.exists()
    assert dest.with_name("w.pth.part").read_bytes() == PAYLOAD[:100_000]

    dl.download(server.url(), dest, retries=0, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=100000-"]


def test_connection_lost_mid_transfer_is_retried_and_resumed_in_one_call(server, tmp_path):
    dest = tmp_path / "w.pth"
    server.cut_after = 123_457
    dl.download(server.url(), dest, retries=2, sha256=PAYLOAD_SHA256, chunk=16_384, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=123457-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "w.pth"
    # Stale bytes that differ from the payload: appending the 200 body to them would corrupt the file.
    dest.with_name("w.pth.part").write_bytes(b"\x00" * 5000)
    server.ignore_range = True
    dl.download(server.url(), dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0]["range"] == "bytes=5000-"


def test_complete_part_file_answered_416_is_accepted(server, tmp_path):
    dest = tmp_path / "w.pth"
    dest.with_name("w.pth.part").write_bytes(PAYLOAD)
    dl.download(server.url(), dest, expected_size=len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [{"path": "/imagebind_tiny.pth", "range": f"bytes={len(PAYLOAD)}-"}]


def test_oversized_part_file_answered_416_restarts(server, tmp_path):
    dest = tmp_path / "w.pth"
    dest.with_name("w.pth.part").write_bytes(PAYLOAD + b"junk")
    dl.download(server.url(), dest, retries=0, **FAST)  # a restart is not a failed attempt
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [f"bytes={len(PAYLOAD) + 4}-", None]


def test_size_mismatch_raises_and_leaves_no_file(server, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as exc:
        dl.download(server.url(), dest, expected_size=len(PAYLOAD) + 1, **FAST)
    msg = str(exc.value)
    assert server.url() in msg and str(len(PAYLOAD)) in msg and str(len(PAYLOAD) + 1) in msg
    assert list(tmp_path.iterdir()) == []


def test_sha256_mismatch_raises_and_leaves_no_file(server, tmp_path):
    dest = tmp_path / "w.pth"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DownloadError, match="sha256 mismatch") as exc:
        dl.download(server.url(), dest, sha256=wrong, **FAST)
    assert wrong in str(exc.value) and PAYLOAD_SHA256 in str(exc.value) and server.url() in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_http_404_names_the_url_and_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as exc:
        dl.download(server.url("/missing"), tmp_path / "w.pth", retries=3, **FAST)
    assert server.url("/missing") in str(exc.value)
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_raises_after_retries(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.pth"
    with pytest.raises(DownloadError, match=r"failed after 1 retries: cannot connect") as exc:
        dl.download(url, tmp_path / "w.pth", retries=1, **FAST)
    assert url in str(exc.value)


def test_existing_file_is_not_downloaded_again_unless_forced(server, tmp_path):
    dest = tmp_path / "w.pth"
    dl.download(server.url(), dest, sha256=PAYLOAD_SHA256, **FAST)
    assert len(server.requests) == 1
    assert dl.download(server.url(), dest, sha256=PAYLOAD_SHA256, **FAST) == dest
    assert len(server.requests) == 1, "an existing verified file must not be fetched again"
    dl.download(server.url(), dest, force=True, **FAST)
    assert len(server.requests) == 2 and dest.read_bytes() == PAYLOAD


def test_existing_file_of_the_wrong_size_is_replaced(server, tmp_path):
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"old")
    dl.download(server.url(), dest, expected_size=len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_bad_arguments_are_rejected_before_any_request(server, tmp_path):
    with pytest.raises(ConfigError, match="sha256: expected 64 hexadecimal"):
        dl.download(server.url(), tmp_path / "w.pth", sha256="abc", **FAST)
    with pytest.raises(ConfigError, match="url: expected an http"):
        dl.download("ftp://example.org/x", tmp_path / "w.pth", **FAST)
    with pytest.raises(DownloadError, match="is a directory"):
        dl.download(server.url(), tmp_path, **FAST)
    assert server.requests == []


def test_licence_notice_is_logged_before_fetching_official_weights(monkeypatch, tmp_path, caplog):
    seen: list[str] = []

    def refuse(request, timeout):  # stands in for the network: no request leaves this machine
        seen.append(request.full_url)
        raise urllib.error.HTTPError(request.full_url, 403, "Forbidden", {}, None)

    monkeypatch.setattr(dl.urllib.request, "urlopen", refuse)
    with caplog.at_level(logging.WARNING, logger="edgebind"), pytest.raises(DownloadError, match="HTTP 403"):
        dl.fetch_checkpoint(dest=tmp_path / "imagebind_huge.pth", **FAST)
    assert seen == [dl.OFFICIAL_URL]
    notices = [r.getMessage() for r in caplog.records if "CC BY-NC-SA 4.0" in r.getMessage()]
    assert len(notices) == 1 and "non-commercial" in notices[0]


def test_no_licence_notice_for_other_urls(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="edgebind"):
        dl.download(server.url(), tmp_path / "w.pth", **FAST)
    assert not [r for r in caplog.records if "CC BY-NC-SA" in r.getMessage()]


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEBIND_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert dl.cache_dir() == tmp_path / "home" / ".cache" / "edgebind"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.cache_dir() == tmp_path / "xdg" / "edgebind"
    monkeypatch.setenv("EDGEBIND_CACHE", str(tmp_path / "eb"))
    assert dl.cache_dir() == tmp_path / "eb"
    assert dl.default_checkpoint_path() == tmp_path / "eb" / "checkpoints" / "imagebind_huge.pth"
    monkeypatch.setenv("EDGEBIND_CACHE", "")  # empty means unset
    assert dl.cache_dir() == tmp_path / "xdg" / "edgebind"
    with pytest.raises(ConfigError, match="checkpoint name '../x' is invalid"):
        dl.default_checkpoint_path("../x")


def test_fetch_checkpoint_uses_the_cache(server, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEBIND_CACHE", str(tmp_path / "cache"))
    path = dl.fetch_checkpoint("tiny", url=server.url(), **FAST)
    assert path == tmp_path / "cache" / "checkpoints" / "tiny.pth" and path.read_bytes() == PAYLOAD


@pytest.fixture()
def download_only_cli(monkeypatch):
    # Only this command: the other subcommand modules belong to other parts of the project.
    monkeypatch.setattr(cli_main, "COMMANDS", {"download": "download"})
    yield cli_main.main
    logging.getLogger("edgebind").handlers[:] = [logging.NullHandler()]  # undo the CLI's handler on captured stderr


def test_cli_download_json(server, tmp_path, capsys, download_only_cli):
    dest = tmp_path / "cli.pth"
    rc = download_only_cli(["-q", "download", "--url", server.url(), "--dest", str(dest), "--json", "--no-progress"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"path": str(dest), "size": len(PAYLOAD), "sha256": PAYLOAD_SHA256}
    assert dest.read_bytes() == PAYLOAD

    rc = download_only_cli(["-q", "download", "--url", server.url(), "--dest", str(dest), "--sha256", PAYLOAD_SHA256])
    assert rc == 0 and capsys.readouterr().out.strip() == str(dest)
    assert len(server.requests) == 1, "the second run must reuse the verified file"


def test_cli_download_error_exit_code(server, tmp_path, capsys, download_only_cli):
    rc = download_only_cli(["-q", "download", "--url", server.url("/missing"), "--dest", str(tmp_path / "x.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and "HTTP 404" in err and server.url("/missing") in err
    assert not Path(tmp_path / "x.pth").exists()
