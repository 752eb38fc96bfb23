"""Issue 20: an MSD task one command away, tested against a server on 127.0.0.1 (no network)."""

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers.fetch import COMPLETE, MSD_MD5, FetchError, fetch_task, main


def msd_archive(extra: dict[str, bytes] | None = None) -> bytes:
    """A tiny Task09_Spleen in the MSD layout, with a macOS ``._`` file, as a tar."""
    spec = {"name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"}}
    files = {
        "Task09_Spleen/dataset.json": json.dumps(spec).encode(),
        "Task09_Spleen/imagesTr/spleen_2.nii.gz": b"\x1f\x8b" + bytes(range(256)) * 40,
        "Task09_Spleen/imagesTr/._spleen_2.nii.gz": b"AppleDouble",
        **(extra or {}),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Server:
    """Serves ``body`` at /Task09_Spleen.tar with HTTP Range support; ``cut_at`` ends the
    first response after that many bytes, as a dropped connection does."""

    def __init__(self, body: bytes, cut_at: int | None = None) -> None:
        self.body, self.cut_at, self.ranges, self.requests = body, cut_at, [], 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    server.ranges.append(start)
                data = server.body[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if server.cut_at is not None:
                    data, server.cut_at = data[: server.cut_at], None
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/Task09_Spleen.tar"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(body, **kw):
        servers.append(Server(body, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_a_full_download_is_checked_unpacked_and_never_fetched_twice(serve, tmp_path):
    body = msd_archive()
    server = serve(body)
    folder = fetch_task("Task09_Spleen", tmp_path, url=server.url, md5=md5(body), progress=False)
    assert folder == tmp_path / "Task09_Spleen" and (folder / COMPLETE).exists()
    assert json.loads((folder / "dataset.json").read_text())["name"] == "Spleen"
    assert (folder / "imagesTr" / "spleen_2.nii.gz").exists()
    assert not (folder / "imagesTr" / "._spleen_2.nii.gz").exists()  # macOS metadata skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task09_Spleen"]  # no archive, no staging
    fetch_task("Task09_Spleen", tmp_path, url=server.url, md5=md5(body), progress=False)
    assert server.requests == 1


def test_a_download_cut_half_way_resumes_where_it_stopped(serve, tmp_path):
    body = msd_archive()
    server = serve(body, cut_at=len(body) // 2)
    with pytest.raises(FetchError, match="run the same command again to resume"):
        fetch_task("Task09_Spleen", tmp_path, url=server.url, md5=md5(body), progress=False)
    part = tmp_path / "Task09_Spleen.tar.part"
    assert part.stat().st_size == len(body) // 2 and not (tmp_path / "Task09_Spleen").exists()
    folder = fetch_task("Task09_Spleen", tmp_path, url=server.url, md5=md5(body), progress=False)
    assert server.ranges == [len(body) // 2]  # the second request asked only for the rest
    assert (folder / COMPLETE).exists() and not part.exists()


def test_an_unpacking_cut_off_starts_again_from_the_checked_archive(serve, tmp_path):
    body = msd_archive()
    server = serve(body)
    (tmp_path / "Task09_Spleen.tar").write_bytes(body)  # downloaded and checked, then killed
    (tmp_path / ".Task09_Spleen.unpacking" / "Task09_Spleen").mkdir(parents=True)
    folder = fetch_task("Task09_Spleen", tmp_path, url=server.url, md5=md5(body), progress=False)
    assert (folder / COMPLETE).exists() and server.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task09_Spleen"]


def test_a_wrong_checksum_unpacks_nothing_and_names_an_html_page(serve, tmp_path):
    body = msd_archive()
    server = serve(body)
    with pytest.raises(FetchError, match=r"MD5 .* is not the published 0+.*nothing was unpacked"):
        fetch_task("Task09_Spleen", tmp_path, url=server.url, md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []
    page = serve(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(FetchError, match="an HTML page, not the archive"):
        fetch_task("Task09_Spleen", tmp_path, url=page.url, md5=md5(body), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_member_outside_the_destination_is_refused(serve, tmp_path):
    body = msd_archive({"Task09_Spleen/../../evil.txt": b"pwned"})
    server = serve(body)
    with pytest.raises(FetchError, match=r"'Task09_Spleen/\.\./\.\./evil\.txt' would be written outside"):
        fetch_task("Task09_Spleen", tmp_path / "data", url=server.url, md5=md5(body), progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "Task09_Spleen").exists()


def test_an_unknown_task_lists_the_valid_ones(capsys):
    assert main(["Task11_Kidney"]) == 1
    err = capsys.readouterr().err
    assert "unknown task 'Task11_Kidney'" in err and all(task in err for task in MSD_MD5)
