import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

import charrnn
from charrnn.serving.app import ServeLimits, create_app
from helpers import sse

LIMITS = ServeLimits(max_length=400, max_samples=4, max_prompt_chars=50, max_body_bytes=2000)


@pytest.fixture(scope="module")
def model(tiny_run):
    return charrnn.load(tiny_run)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, LIMITS)) as test_client:
        yield test_client


def test_health_model_and_schema(client, model):
    assert client.get("/health").json() == {
        "status": "ok",
        "active_streams": 0,
        "active_generations": 0,
        "active_rows": 0,
        "queued_generations": 0,
        "max_batch": 64,
        "precision": model.backend(1).precision,
    }
    info = client.get("/v1/model").json()
    assert info["cell"] == "gru" and info["hidden_size"] == 32 and info["vocab_size"] == len(info["vocabulary"])
    assert info["last_epoch"]["val_loss"] > 0 and info["limits"]["max_length"] == 400
    schema = client.get("/openapi.json").json()
    assert "/v1/generate" in schema["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "Generate" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from the internet


def test_generate_matches_the_python_api(client, model):
    body = {"prompt": "ROMEO:", "length": 120, "temperature": 0.8, "top_k": 20, "seed": 7, "num_samples": 2}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200
    assert response.json() == {
        "samples": model.generate("ROMEO:", length=120, temperature=0.8, top_k=20, seed=7, num_samples=2),
        "seed": 7,
    }
    unseeded = client.post("/v1/generate", json={"prompt": "A", "length": 20}).json()
    assert isinstance(unseeded["seed"], int)
    again = client.post("/v1/generate", json={"prompt": "A", "length": 20, "seed": unseeded["seed"]}).json()
    assert again["samples"] == unseeded["samples"]  # the returned seed reproduces the text


def test_streaming_gives_the_same_text(client, model):
    body = {"prompt": "JULIET:", "length": 300, "seed": 3, "stream": True}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    chunks, done = sse(response.text)
    assert chunks[0] == ["JULIET:"] and done == {"seed": 3}
    assert "".join(c[0] for c in chunks) == model.generate("JULIET:", length=300, seed=3)[0]


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"prompt": "Zoë"}, 400, "never saw: 'Z', 'ë'"),
        ({"prompt": "Zoë", "stream": True}, 400, "never saw"),
        ({"temperature": -1}, 400, "temperature must be a non-negative"),
        ({"top_p": 0}, 400, "top_p must be a number in (0, 1]"),
        ({"length": 401}, 400, "length is 401; this server allows at most 400 (--max-length)"),
        ({"num_samples": 5}, 400, "at most 4 (--max-samples)"),
        ({"prompt": "a" * 51}, 400, "prompt is 51 characters; this server allows at most 50"),
        ({"length": "long"}, 422, "length"),
        ({"lenght": 5}, 422, "lenght"),
    ],
)
def test_bad_requests_get_json_errors(client, body, status, fragment):
    response = client.post("/v1/generate", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_body_limit(client):
    response = client.post(
        "/v1/generate", content=json.dumps({"prompt": "a" * 3000}), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "larger than 2000 bytes" in response.json()["error"]
    chunked = client.post(
        "/v1/generate",
        content=iter([b'{"prompt": "', b"a" * 2500, b'"}']),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413


@pytest.fixture(scope="module")
def server(model):
    """The real server (uvicorn) on a free local port."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(model, ServeLimits(max_length=200_000))
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    instance.should_exit = True
    thread.join(timeout=10)


def test_concurrent_requests_are_each_correct(server, model):
    url, _ = server

    def ask(seed):
        body = {"prompt": "ROMEO:", "length": 150, "seed": seed, "stream": seed % 2 == 0}
        response = httpx.post(f"{url}/v1/generate", json=body, timeout=60)
        if body["stream"]:
            return "".join(c[0] for c in sse(response.text)[0])
        return response.json()["samples"][0]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(ask, range(6)))
    assert results == [model.generate("ROMEO:", length=150, seed=s)[0] for s in range(6)]


def test_client_disconnect_stops_generation(server):
    url, app = server
    with httpx.Client(timeout=30) as http:
        with http.stream(
            "POST", f"{url}/v1/generate", json={"prompt": "A", "length": 200_000, "stream": True}
        ) as response:
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data: ")
                if received >= 5:  # checked before leaving the loop, which closes the connection
                    assert http.get(f"{url}/health").json()["active_streams"] == 1
                    break
    deadline = time.time() + 10  # 200,000 characters would take minutes; stopping takes a chunk
    while time.time() < deadline and httpx.get(f"{url}/health").json()["active_streams"]:
        time.sleep(0.05)
    assert httpx.get(f"{url}/health").json()["active_streams"] == 0


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (CI installs Debian's chromium)")
def test_web_page_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = server
    shot = Path(os.environ.get("CHARRNN_SCREENSHOT", tmp_path / "page.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(url)
        page.wait_for_function("document.getElementById('about').textContent.includes('parameters')")
        page.fill("#prompt", "ROMEO:")
        page.fill("#length", "600")
        page.fill("#seed", "11")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
        text = page.inner_text("#output")
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 600
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
