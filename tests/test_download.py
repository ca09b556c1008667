"""Downloading a Hugging Face repo id through huggingface_hub, against a fake hub on 127.0.0.1
and a pre-populated cache; the real snapshot_download code runs in both."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import write_tiny_checkpoint
from qwen_edge.convert.source import download, open_source
from qwen_edge.errors import QwenEdgeError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


class FakeHub:
    """The four endpoints snapshot_download calls, for repos held in memory:
    repo info, the file tree, and HEAD and GET of each file under /resolve/."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.handle(self, body=True)

            def do_HEAD(self) -> None:
                hub.handle(self, body=False)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(
        self, repo_id: str, directory: Path, extra: dict[str, bytes] | None = None
    ) -> None:
        files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
        self.repos[repo_id] = {**files, **(extra or {})}

    def downloaded(self) -> list[str]:
        """Return the files fetched with GET, in request order."""
        return [
            path.rsplit("/", 1)[1]
            for method, path in self.requests
            if method == "GET" and "/resolve/" in path
        ]

    def handle(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((request.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, kind = "/".join(parts[2:4]), parts[4]
            files = self.repos.get(repo_id)
            if files is None:
                return self.reply(request, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
            if kind == "revision":
                info = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                return self.reply_json(request, info, body)
            if kind == "tree":
                tree = [
                    {"type": "file", "path": name, "size": len(data), "oid": _sha1(data)}
                    for name, data in files.items()
                ]
                return self.reply_json(request, tree, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            files = self.repos.get("/".join(parts[:2]), {})
            name = "/".join(parts[4:])
            if name in files:
                data = files[name]
                headers = {
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Content-Type": "application/octet-stream",
                }
                return self.reply(request, 200, data, headers, body)
            return self.reply(request, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        return self.reply(request, 404, b"not found", {}, body)

    def reply_json(self, request: BaseHTTPRequestHandler, value: object, body: bool) -> None:
        data = json.dumps(value).encode()
        self.reply(request, 200, data, {"Content-Type": "application/json"}, body)

    @staticmethod
    def reply(
        request: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict, body: bool
    ) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """Point huggingface_hub's cache (and everything else it writes) into tmp_path.

    huggingface_hub reads HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE into module constants at
    import time, so the constants themselves are patched as well as the environment.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "harnesses.json"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # A path such as "org/tiny" must not exist relative to the working directory.
    monkeypatch.chdir(tmp_path)
    return cache


@pytest.fixture
def fake_hub(hub_cache, monkeypatch) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, demo_model_dir) -> Path:
    """A tiny checkpoint with the demo tokenizer: what a Hugging Face repo would hold."""
    directory = write_tiny_checkpoint(tmp_path_factory.mktemp("repo") / "tiny")
    for name in TOKENIZER_FILES:
        shutil.copyfile(demo_model_dir / name, directory / name)
    return directory


def test_download_skips_pickles_and_shows_progress(fake_hub, hub_cache, tiny_repo, capfd):
    fake_hub.add_repo("org/tiny", tiny_repo, {"pytorch_model.bin": b"pickle", "README.md": b"#"})

    path = download("org/tiny")

    assert path == hub_cache / "models--org--tiny" / "snapshots" / COMMIT
    assert (hub_cache / "models--org--tiny" / "refs" / "main").read_text() == COMMIT
    expected = {"config.json", "model.safetensors", *TOKENIZER_FILES}
    assert {p.name for p in path.iterdir()} == expected
    assert sorted(fake_hub.downloaded()) == sorted(expected)
    for name in expected:
        assert (path / name).read_bytes() == (tiny_repo / name).read_bytes()
    assert f"Fetching {len(expected)} files" in capfd.readouterr().err


def test_second_download_reuses_files(fake_hub, hub_cache, tiny_repo):
    fake_hub.add_repo("org/tiny", tiny_repo)
    first = download("org/tiny")
    fetched = len(fake_hub.downloaded())

    assert download("org/tiny") == first
    assert len(fake_hub.downloaded()) == fetched


def test_cached_repo_opens_offline(fake_hub, hub_cache, tiny_repo, monkeypatch):
    from huggingface_hub import constants

    fake_hub.add_repo("org/tiny", tiny_repo)
    first = download("org/tiny")
    fake_hub.close()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    assert download("org/tiny") == first


def test_prepopulated_cache_is_used_offline(hub_cache, tiny_repo, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = hub_cache / "models--org--cached"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(tiny_repo, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)

    with open_source("org/cached") as source:
        assert source.origin == "hub"
        assert source.path == snapshot
        assert not source.quantized


def test_pickle_only_repo_is_rejected(fake_hub, tiny_repo):
    fake_hub.add_repo(
        "org/pickled",
        tiny_repo,
        {"pytorch_model.bin": b"pickle"},
    )
    del fake_hub.repos["org/pickled"]["model.safetensors"]

    with pytest.raises(QwenEdgeError, match="org/pickled has no safetensors weights"):
        download("org/pickled")
    assert "pytorch_model.bin" not in fake_hub.downloaded()


def test_unknown_repo_is_reported(fake_hub):
    with pytest.raises(QwenEdgeError, match="downloading org/missing failed"):
        download("org/missing")


def test_offline_without_cache_says_what_to_do(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(QwenEdgeError, match="unreachable and the repo is not in the local cache"):
        download("org/absent")


def test_convert_from_repo_id(fake_hub, tiny_repo, tmp_path):
    from qwen_edge.convert.mlx_export import convert_to_mlx

    fake_hub.add_repo("org/tiny", tiny_repo)
    out = convert_to_mlx("org/tiny", tmp_path / "q4")

    config = json.loads((out / "config.json").read_text("utf-8"))
    assert config["quantization"]["bits"] == 4
    assert (out / "tokenizer.json").read_bytes() == (tiny_repo / "tokenizer.json").read_bytes()
