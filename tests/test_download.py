"""The flowers download, run offline against a local HTTP server standing in for TensorFlow's."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from headstart.core.errors import HeadstartError
from headstart.core.progress import NullProgress
from headstart.data.discovery import discover
from headstart.data.download import fetch_flowers


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("flower_photos/daisy/a.jpg", "flower_photos/roses/b.jpg", "flower_photos/LICENSE.txt"):
            data = name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def server():
    payload = _archive()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/flower_photos.tgz", payload, hits
    httpd.shutdown()


def test_download_verifies_unpacks_and_happens_once(server, tmp_path):
    url, payload, hits = server
    sha = hashlib.sha256(payload).hexdigest()
    folder = fetch_flowers(tmp_path, url=url, sha256=sha, progress=NullProgress())
    assert folder == tmp_path / "datasets" / "flower_photos"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["daisy", "roses"]
    assert not list((tmp_path / "datasets").glob(".unpack-*"))
    assert fetch_flowers(tmp_path, url=url, sha256=sha) == folder
    assert len(hits) == 1  # the second call found the folder and downloaded nothing
    assert discover(folder).classes == ["daisy", "roses"]


def test_wrong_checksum_keeps_nothing(server, tmp_path):
    url, _, _ = server
    with pytest.raises(HeadstartError, match="sha256"):
        fetch_flowers(tmp_path, url=url, sha256="0" * 64, progress=NullProgress())
    assert not (tmp_path / "datasets" / "flower_photos").exists()
    assert not list((tmp_path / "datasets").iterdir())


def test_offline_is_a_clear_error(tmp_path):
    with pytest.raises(HeadstartError, match="pass a DATA folder"):
        fetch_flowers(tmp_path, url="http://127.0.0.1:9/flower_photos.tgz", progress=NullProgress())
    assert not list(Path(tmp_path, "datasets").iterdir())
