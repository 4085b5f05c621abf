"""A server facing hostile or careless surroundings: a metrics.jsonl that grows (or is huge) while it serves,
DNS-rebinding pages sending a foreign Host header, and clients that should never learn local paths."""

import asyncio
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

import charrnn
from charrnn.errors import CharRNNError
from charrnn.serving.app import ServeLimits, create_app
from charrnn.serving.card import public
from charrnn.serving.hosts import LOOPBACK_NAMES, allowed_hosts, parse_hosts
from conftest import run_cli
from helpers import assert_one_line_error, live

LIMITS = ServeLimits(max_length=400, max_samples=4, max_prompt_chars=50, max_body_bytes=2000)


def epoch_line(epoch: int, step: int, val_loss: float) -> str:
    return json.dumps({"kind": "epoch", "epoch": epoch, "step": step, "complete": True, "val_loss": val_loss}) + "\n"


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the shared run, whose metrics.jsonl a test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "copy"))


# -- /v1/model describes the weights served, read once -------------------------------------------------------
def test_v1_model_describes_the_served_checkpoint_not_epochs_trained_since(run):
    model = charrnn.load(run)
    with (run / "metrics.jsonl").open("a") as metrics:  # the run trained on after the served checkpoint
        metrics.write(epoch_line(99, 10**6, 9.5))
    with live(create_app(model, LIMITS)) as url:
        info = httpx.get(f"{url}/v1/model", timeout=30).json()
        served = info["checkpoint"]
        assert served["file"] == "best.safetensors" and info["last_epoch"]["epoch"] == served["epoch"] != 99
        assert info["last_epoch"]["step"] == served["step"]
        lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        rewritten = [epoch_line(1, 0, 0.0) if '"epoch"' in line else line for line in lines]
        (run / "metrics.jsonl").write_text("".join(rewritten) + epoch_line(100, 2 * 10**6, 0.1))
        assert httpx.get(f"{url}/v1/model", timeout=30).json() == info  # unchanged until a restart


def test_v1_model_reads_the_metrics_once_and_off_the_event_loop(run, monkeypatch):
    step = json.dumps({"kind": "step", "epoch": 1, "step": 1, "loss": 2.5, "lr": 0.001, "elapsed": 1.0}) + "\n"
    metrics = run / "metrics.jsonl"
    recorded = metrics.read_text()
    metrics.write_text(step * 40_000 + "x" * 3_000_000 + "\n" + recorded)  # 4 MB, one absurd line among them
    opened, original = [], pathlib.Path.open

    def counting(self, *args, **kwargs):
        if self.name == "metrics.jsonl":
            try:
                asyncio.get_running_loop()
                opened.append("on the event loop")
            except RuntimeError:
                opened.append("in a thread")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", counting)
    model = charrnn.load(run)
    with live(create_app(model, LIMITS)) as url:
        answers = [httpx.get(f"{url}/v1/model", timeout=30).json() for _ in range(5)]
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    assert opened == ["in a thread"]
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["last_epoch"]["step"] == answers[0]["checkpoint"]["step"]


# -- Host headers ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(tiny_run):
    """The app with the hosts `charrnn serve` accepts on 127.0.0.1, on uvicorn."""
    app = create_app(charrnn.load(tiny_run), LIMITS, model_id="tiny", allowed_hosts=allowed_hosts("127.0.0.1"))
    with live(app) as url:
        yield url


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "localhost.evil.example", "127.0.0.1.nip.io"])
@pytest.mark.parametrize("path", ["/health", "/v1/model", "/"])
def test_a_foreign_host_header_is_a_json_400(guarded, host, path):
    response = httpx.get(f"{guarded}{path}", headers={"Host": host}, timeout=30)
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert host.split(":")[0] in message and "--allowed-hosts" in message and "\n" not in message


def test_the_openai_paths_refuse_a_foreign_host_in_openais_envelope(guarded):
    response = httpx.post(
        f"{guarded}/v1/completions", json={"prompt": "A"}, headers={"Host": "evil.example"}, timeout=30
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "evil.example" in error["message"]


def test_a_request_without_a_host_header_is_a_json_400(guarded):
    address = guarded.removeprefix("http://").split(":")
    with socket.create_connection((address[0], int(address[1])), timeout=30) as raw:
        raw.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: raw.recv(65536), b"")).decode()
    head, body = answer.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 400") and "without a Host header" in json.loads(body)["error"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:1234", "[::1]", "[::1]:8000"])
def test_loopback_names_are_answered(guarded, host):
    response = httpx.get(f"{guarded}/health", headers={"Host": host}, timeout=30)
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_generation_works_through_the_guard(guarded):
    response = httpx.post(f"{guarded}/v1/generate", json={"prompt": "A", "length": 5, "seed": 1}, timeout=30)
    assert response.status_code == 200 and len(response.json()["samples"][0]) == 6
    completion = httpx.post(f"{guarded}/v1/completions", json={"model": "tiny", "prompt": "A", "max_tokens": 3})
    assert completion.status_code == 200 and completion.json()["model"] == "tiny"


def test_which_hosts_a_bind_answers_to():
    assert allowed_hosts("127.0.0.1") == list(LOOPBACK_NAMES)
    assert allowed_hosts("::1") == list(LOOPBACK_NAMES)
    assert allowed_hosts("127.0.0.2") == [*LOOPBACK_NAMES, "127.0.0.2"]
    assert allowed_hosts("0.0.0.0") == ["*"] and allowed_hosts("::") == ["*"]  # remote access, by any name
    assert allowed_hosts("192.0.2.7") == ["*"]
    assert allowed_hosts("192.0.2.7", ("box.example",)) == [*LOOPBACK_NAMES, "192.0.2.7", "box.example"]
    assert allowed_hosts("0.0.0.0", ("box.example",)) == [*LOOPBACK_NAMES, "box.example"]
    assert allowed_hosts("127.0.0.1", ("*",)) == ["*"]
    assert allowed_hosts("fe80::1", ("*.example",)) == [*LOOPBACK_NAMES, "[fe80::1]", "*.example"]


def test_allowed_hosts_are_parsed_and_bad_ones_named():
    assert parse_hosts(" Box.Example , *.lan.example,::1,[fe80::2], 10.0.0.1") == (
        "box.example",
        "*.lan.example",
        "[::1]",
        "[fe80::2]",
        "10.0.0.1",
    )
    assert parse_hosts("*") == ("*",)
    for bad, fragment in [
        ("", "at least one"),
        ("a.example,", "empty"),
        ("box.example:8000", "without a port"),
        ("foo*.example", "'*.example.com'"),
        ("http://box.example", "without a port"),
        ("bad host", "not a host name"),
    ]:
        with pytest.raises(CharRNNError, match=fragment) as raised:
            parse_hosts(bad)
        assert "--allowed-hosts" in str(raised.value) and "\n" not in str(raised.value)


# -- names, not paths --------------------------------------------------------------------------------------
def test_paths_are_reduced_to_names():
    assert public({"source": "/home/me/data/shakespeare.txt", "n": 3}) == {"source": "shakespeare.txt", "n": 3}
    assert public(["C:\\Users\\me\\corpus", "/srv/books/*.txt", "gru"]) == ["corpus", "*.txt", "gru"]
    assert (
        public("https://user:secret@example.org/data/input.txt?token=abc#top") == "https://example.org/data/input.txt"
    )


def test_a_model_describing_paths_shows_clients_names(tiny_run):
    class Described:
        vocab = charrnn.load(tiny_run).vocab

        def describe(self):
            return {"corpus": {"name": "t", "source": "/srv/private/t.txt"}, "run": "/srv/private/run"}

        def stream(self, **options):
            yield [options["prompt"]]

    with live(create_app(Described(), LIMITS)) as url:
        text = httpx.get(f"{url}/v1/model", timeout=30).text
    assert "/srv" not in text and json.loads(text)["corpus"]["source"] == "t.txt"


class Served:
    """`charrnn serve ARGS --port 0` in a subprocess, as a user runs it; its URL from the first line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "serve", *map(str, args), "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first_line = self.proc.stderr.readline()
        assert " on http://" in self.first_line, self.first_line + self.proc.stderr.read()
        self.url = self.first_line.split(" on ")[1].split("/ ")[0]
        self.port = self.url.rsplit(":", 1)[1]
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(f"{self.url}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)

    def get(self, path, host=None):
        return httpx.get(f"{self.url}{path}", headers={"Host": host} if host else {}, timeout=30)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_charrnn_serve_answers_its_own_names_and_tells_no_paths(tiny_run, small_text, tmp_path_factory):
    server = Served(tiny_run.resolve())
    try:
        assert server.get("/health", "evil.example").status_code == 400
        assert server.get("/health", f"localhost:{server.port}").status_code == 200
        assert "model 'tiny'" in server.first_line
        answers = {path: server.get(path) for path in ("/v1/model", "/v1/models", "/v1/models/tiny", "/health")}
    finally:
        server.stop()
    assert all(answer.status_code == 200 for answer in answers.values())
    assert [m["id"] for m in answers["/v1/models"].json()["data"]] == ["tiny"]
    assert answers["/v1/model"].json()["corpus"]["source"] == small_text.name
    for answer in answers.values():
        for private in (str(tmp_path_factory.getbasetemp()), str(Path.home()), os.getcwd()):
            assert private not in answer.text


def test_allowed_hosts_through_the_command_line(tiny_run):
    server = Served(tiny_run, "--allowed-hosts", "box.example,*.lan.example")
    try:
        assert server.get("/health", "box.example").status_code == 200
        assert server.get("/health", f"gpu.lan.example:{server.port}").status_code == 200
        assert server.get("/health", "127.0.0.1").status_code == 200  # loopback names stay answered
        refused = server.get("/v1/model", "evil.example")
    finally:
        server.stop()
    assert refused.status_code == 400 and "box.example, *.lan.example" in refused.json()["error"]


@pytest.mark.parametrize("value", ["box.example:8000", "", "a*.example"])
def test_bad_allowed_hosts_are_one_line_errors(tiny_run, value):
    assert_one_line_error(run_cli("serve", tiny_run, "--allowed-hosts", value, timeout=120), "--allowed-hosts")
