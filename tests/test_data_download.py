"""Downloads against a local HTTP server: resume, checksums, unpacking, the CLI command."""

import hashlib
import http.server
import threading
import zipfile

import pytest
from typer.testing import CliRunner

import fake_formats as ff
from clbench.cli import app
from clbench.data.download import Source, fetch, install, unpack
from clbench.errors import DataError


class Server:
    """Serves ``files`` on 127.0.0.1 with byte ranges; can cut a response after N bytes."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_after: int | None = None  # cut the next response after this many bytes
        self.ranges = True
        self.requests: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(self.headers.get("Range"))
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_after is not None:
                    payload, server.cut_after = payload[: server.cut_after], None
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server({})
    yield s
    s.close()


def test_an_interrupted_download_resumes(server, tmp_path):
    body = bytes(range(256)) * 4000
    server.files["big.bin"] = body
    server.cut_after = 300_000
    dest = tmp_path / "big.bin"
    seen = []
    with pytest.raises(DataError, match=r"stopped after 300,000 of 1,024,000 bytes.*again to resume"):
        fetch(server.url + "big.bin", dest, on_progress=lambda done, total: seen.append((done, total)))
    assert (tmp_path / "big.bin.part").stat().st_size == 300_000 and not dest.exists()
    assert seen[-1] == (300_000, 1_024_000)
    fetch(server.url + "big.bin", dest)
    assert dest.read_bytes() == body and server.requests[-1] == "bytes=300000-"
    assert not (tmp_path / "big.bin.part").exists()


def test_a_server_without_ranges_restarts_cleanly(server, tmp_path):
    server.files["f.bin"] = b"x" * 5000 + b"y" * 5000
    server.ranges = False
    (tmp_path / "f.bin.part").write_bytes(b"x" * 3000)
    fetch(server.url + "f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == server.files["f.bin"]


def test_missing_url_and_checksum_mismatch(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(server.url + "nothing", tmp_path / "nothing")
    server.files["data.tar"] = b"not what was published"
    src = Source("data.tar", server.url + "data.tar", md5="0" * 32)
    with pytest.raises(DataError, match=r"data.tar has md5 [0-9a-f]{32}, but data.tar should have 0{32}.*download it again"):
        install(src, tmp_path)
    assert not (tmp_path / "data.tar").exists()  # a bad download is not left behind
    manual = Source("aper.zip", None, md5="1" * 32, note="Get it from the authors' drive.")
    with pytest.raises(DataError, match=r"no direct download link. Get it from the authors' drive. .*--archive /path/to/aper.zip"):
        install(manual, tmp_path)


def test_archives_are_unpacked_safely(tmp_path):
    src = tmp_path / "src" / "pkg"
    ff.image_folder(src, ["a"], 2)
    for name in ("a.zip", "a.tar.gz", "a.tar"):
        out = tmp_path / f"out-{name}"
        unpack(ff.archive(src, tmp_path / name), out)
        assert sorted(p.name for p in (out / "pkg" / "a").iterdir()) == ["art_0.jpg", "cartoon_1.jpg"]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(DataError, match="outside the target folder"):
        unpack(evil, tmp_path / "out-evil")
    assert not (tmp_path / "escaped.txt").exists()
    (tmp_path / "junk.zip").write_bytes(b"junk")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        unpack(tmp_path / "junk.zip", tmp_path / "out-junk")


def test_clbench_data_download_cifar100_from_a_mirror(server, tmp_path, monkeypatch):
    from clbench.benchmarks import cifar100

    ff.cifar100(tmp_path / "build", 1, 1)
    archive = ff.archive(tmp_path / "build" / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    server.files["cifar-100-python.tar.gz"] = archive.read_bytes()
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "data"
    args = ["data", "download", "cifar100", "--data-root", str(root), "--mirror", server.url, "--no-progress",
            "--set", "benchmark.check_counts=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "checksum verified" in result.output and "100 classes, 100 train and 100 test images in place" in result.output
    assert sorted(p.name for p in (root / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    assert not (root / "cifar-100-python.tar.gz").exists()  # archives are removed after unpacking
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "already in place" in again.output
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", "f" * 32)
    bad = CliRunner().invoke(app, args + ["--force"])
    assert bad.exit_code == 2 and "should have ffffffff" in bad.output


def test_clbench_data_download_with_a_hand_fetched_archive(tmp_path, monkeypatch):
    from clbench.benchmarks import imagenet_r as inr

    ff.presplit(tmp_path / "build", "imagenet-r", ff.wnids(2), 2, 1)
    archive = ff.archive(tmp_path / "build" / "imagenet-r", tmp_path / "imagenet-r.zip")
    root = tmp_path / "data"
    args = ["data", "download", "imagenet_r", "--data-root", str(root), "--archive", str(archive), "--no-progress",
            "--set", "benchmark.check_counts=false"]
    wrong = CliRunner().invoke(app, args)
    assert wrong.exit_code == 2 and "should have 730aa3fb9c7d2ec0b6381c6b23040681" in wrong.output
    assert archive.exists()  # the user's own file is never deleted
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    real_sources = inr.ImageNetR.sources
    monkeypatch.setattr(inr.ImageNetR, "sources", lambda self, cfg: [Source("imagenet-r.zip", None, md5=md5, note="n")])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 classes, 4 train and 2 test images in place" in result.output and archive.exists()
    monkeypatch.setattr(inr.ImageNetR, "sources", real_sources)
    nothing = CliRunner().invoke(app, ["data", "download", "imagenet_r", "--data-root", str(tmp_path / "empty"), "--no-progress"])
    assert nothing.exit_code == 2 and "no direct download link" in nothing.output and "RevisitingCIL" in nothing.output


def test_the_coda_lists_are_served_verified_and_placed_where_runs_look(server, tmp_path):
    from test_data_splits import CODA, CODA_SHA

    if CODA is None:
        pytest.skip("CODA-Prompt split files not found in ../shared/splits/coda-prompt")
    from clbench.benchmarks.imagenet_r import ImageNetR, ImageNetRConfig

    sources = [s for s in ImageNetR().sources(ImageNetRConfig(split="coda")) if s.filename.endswith(".yaml")]
    assert [s.sha256 for s in sources] == [CODA_SHA["train"], CODA_SHA["test"]]
    for s in sources:
        server.files[s.filename] = (CODA / s.filename).read_bytes()
        result = install(s, tmp_path, mirror=server.url)
        assert result["verified"] and (tmp_path / "splits" / "coda-prompt" / s.filename).is_file()
    server.files[sources[1].filename] += b"# edited\n"
    (tmp_path / "splits" / "coda-prompt" / sources[1].filename).unlink()
    with pytest.raises(DataError, match="should have 57275ac2"):
        install(sources[1], tmp_path, mirror=server.url)
    assert not (tmp_path / "splits" / "coda-prompt" / sources[1].filename).exists()
