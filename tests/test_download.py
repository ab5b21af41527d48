"""`spikeformers download cifar10 / cifar100` against an HTTP server on loopback serving small
archives in the real "python version" format: checksums, resuming, atomic and safe extraction."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spikeformers.cli import main
from spikeformers.data import download as dl
from spikeformers.data.cifar import load_cifar_arrays
from spikeformers.errors import DatasetError

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


# ----------------------------------------------------------------------------------------------
# archives in the real format, built here
# ----------------------------------------------------------------------------------------------
def _tar(members: dict[str, bytes], extra=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def cifar10_archive(n: int = 3, seed: int = 0) -> tuple[bytes, dict]:
    """cifar-10-python.tar.gz as published: cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta, readme.html}, each batch a protocol-2 pickle of a dict with bytes keys."""
    rng = np.random.default_rng(seed)
    batches, members = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        b = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
        batches[name] = b
        members[f"cifar-10-batches-py/{name}"] = pickle.dumps(b, protocol=2)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": n, b"num_vis": 3072}, protocol=2)
    members["cifar-10-batches-py/readme.html"] = b"<meta>"
    return _tar(members), batches


def cifar100_archive(n: int = 3, seed: int = 1) -> tuple[bytes, dict]:
    rng = np.random.default_rng(seed)
    splits, members = {}, {}
    for name in ("train", "test"):
        b = {b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": rng.integers(0, 20, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        splits[name] = b
        members[f"cifar-100-python/{name}"] = pickle.dumps(b, protocol=2)
    members["cifar-100-python/meta"] = pickle.dumps(
        {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
         b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, protocol=2)
    return _tar(members), splits


# ----------------------------------------------------------------------------------------------
# the loopback server
# ----------------------------------------------------------------------------------------------
class Server:
    """Serves ``files`` (path -> bytes) with HTTP Range support; ``cut[path] = k`` sends only the
    first k bytes of the next response to ``path`` (announcing all of them) and drops the connection;
    ``ranges=False`` ignores Range headers. ``log`` records (path, Range header) per request."""

    def __init__(self):
        self.files, self.cut, self.ranges, self.log = {}, {}, True, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.log.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and outer.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                k = outer.cut.pop(self.path, None)
                self.wfile.write(body if k is None else body[:k])
                self.wfile.flush()
                if k is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _serve(server, monkeypatch, name: str, data: bytes, md5: str | None = None) -> str:
    """Serve ``data`` as dataset ``name``'s archive and point the registry at it (same file name)."""
    a = dl.ARCHIVES[name]
    path = f"/mirror/{a.filename}"
    server.files[path] = data
    monkeypatch.setitem(dl.ARCHIVES, name, dl.Archive(a.name, server.url + path,
                                                      md5 or hashlib.md5(data).hexdigest(), a.folder, a.files))
    return path


def test_published_archives_and_sums():
    # the CIFAR page's "python version" archives and the MD5 sums it lists
    assert dl.ARCHIVES["cifar10"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert dl.ARCHIVES["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert dl.ARCHIVES["cifar100"].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert dl.ARCHIVES["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert dl.ARCHIVES["cifar10"].filename == "cifar-10-python.tar.gz"


def test_cifar10_download_verifies_extracts_and_is_found_without_data_dir(server, monkeypatch, tmp_path):
    data, batches = cifar10_archive()
    _serve(server, monkeypatch, "cifar10", data)
    dest = tmp_path / "cache"
    r = CliRunner().invoke(main, ["download", "cifar10", "--dest", str(dest)])   # with the progress bar
    assert r.exit_code == 0, r.output
    assert f"cifar10 in {dest / 'cifar-10-batches-py'}" in r.output
    # nothing but the extracted folder: no archive (not kept), no .part, no temporary folder
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]
    assert sorted(p.name for p in (dest / "cifar-10-batches-py").iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta", "readme.html"])
    x, y, names = load_cifar_arrays(dest, 10, train=False)
    want = batches["test_batch"]
    assert torch.equal(x, torch.from_numpy(want[b"data"].reshape(-1, 3, 32, 32)))
    assert y.tolist() == want[b"labels"] and names[0] == "airplane"
    # the reader looks in the download cache when no folder is given
    monkeypatch.delenv("SPIKEFORMERS_DATA", raising=False)
    monkeypatch.setattr(dl, "CACHE_ROOT", dest)
    x2, _, _ = load_cifar_arrays(None, 10, train=True)
    assert x2.shape == (15, 3, 32, 32)
    # a second run finds the complete folder and fetches nothing
    n = len(server.log)
    r = CliRunner().invoke(main, ["download", "cifar10", "--dest", str(dest), "--quiet"])
    assert r.exit_code == 0 and len(server.log) == n


def test_cifar100_download_and_keep_archive(server, monkeypatch, tmp_path):
    data, splits = cifar100_archive()
    _serve(server, monkeypatch, "cifar100", data)
    r = CliRunner().invoke(main, ["download", "cifar100", "--dest", str(tmp_path), "--quiet", "--keep-archive"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cifar-100-python.tar.gz").read_bytes() == data
    x, y, names = load_cifar_arrays(tmp_path, 100, train=True)
    assert y.tolist() == splits["train"][b"fine_labels"] and names[99] == "c99"


def test_wrong_checksum_keeps_nothing(server, monkeypatch, tmp_path):
    data, _ = cifar10_archive()
    _serve(server, monkeypatch, "cifar10", data, md5="0" * 32)
    r = CliRunner().invoke(main, ["download", "cifar10", "--dest", str(tmp_path), "--quiet"])
    assert r.exit_code != 0
    assert f"MD5 {hashlib.md5(data).hexdigest()}, expected the published {'0' * 32}" in r.output
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_a_range_request(server, monkeypatch, tmp_path):
    data, _ = cifar10_archive(n=20)
    path = _serve(server, monkeypatch, "cifar10", data)
    half = len(data) // 2
    server.cut[path] = half
    r = CliRunner().invoke(main, ["download", "cifar10", "--dest", str(tmp_path), "--quiet"])
    assert r.exit_code != 0 and "resume" in r.output
    part = tmp_path / "cifar-10-python.tar.gz.part"
    got = part.stat().st_size
    assert 0 < got <= half and part.read_bytes() == data[:got]
    assert not (tmp_path / "cifar-10-batches-py").exists()
    r = CliRunner().invoke(main, ["download", "cifar10", "--dest", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output
    assert server.log[-1] == (path, f"bytes={got}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]
    assert load_cifar_arrays(tmp_path, 10, train=False)[0].shape == (20, 3, 32, 32)


def test_a_server_without_ranges_restarts_the_file(server, monkeypatch, tmp_path):
    data, _ = cifar10_archive()
    path = _serve(server, monkeypatch, "cifar10", data)
    server.ranges = False
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"stale bytes of another file")
    out = dl.download("cifar10", tmp_path, progress=False)
    assert server.log == [(path, "bytes=27-")]          # asked to resume, got the whole file (200)
    assert (out / "test_batch").is_file()


def _info(name, kind, target=""):
    i = tarfile.TarInfo(name)
    i.type, i.linkname = kind, target
    return i


@pytest.mark.parametrize("bad", [
    {"cifar-10-batches-py/../evil": b"x"},
    {"/tmp/evil": b"x"},
    {"other-folder/data_batch_1": b"x"},
    [_info("cifar-10-batches-py/link", tarfile.SYMTYPE, "../../evil")],
    [_info("cifar-10-batches-py/hard", tarfile.LNKTYPE, "/etc/passwd")],
    [_info("cifar-10-batches-py/dev", tarfile.CHRTYPE)],
], ids=["dotdot", "absolute", "outside-folder", "symlink", "hardlink", "device"])
def test_unsafe_archives_are_refused_before_anything_is_written(tmp_path, bad):
    good, _ = cifar10_archive()
    with tarfile.open(fileobj=io.BytesIO(good), mode="r:gz") as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    if isinstance(bad, dict):
        members.update(bad)
        data = _tar(members)
    else:
        data = _tar(members, extra=bad)
    src = tmp_path / "a.tar.gz"
    src.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DatasetError, match="unsafe path|only plain files|outside the expected folder"):
        dl.safe_extract(src, dest, "cifar-10-batches-py", dl.ARCHIVES["cifar10"].files)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_an_archive_without_the_expected_files_is_refused(tmp_path):
    src = tmp_path / "a.tar.gz"
    src.write_bytes(_tar({"cifar-10-batches-py/data_batch_1": b"x"}))
    with pytest.raises(DatasetError, match="lacks"):
        dl.safe_extract(src, tmp_path, "cifar-10-batches-py", dl.ARCHIVES["cifar10"].files)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_fashion_mnist_download_still_checks_the_published_sums(server, tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        server.files[f"/fm/{name}"] = b"not the real file"
    r = CliRunner().invoke(main, ["download", "fashion-mnist", "--dest", str(tmp_path), "--url", server.url + "/fm/"])
    assert r.exit_code != 0 and "expected the published 8d4fb7e6c68d591d4c3dfef9ec88bf0d" in r.output
