"""Helpers shared by several test packages: CLI error checks, a live server, server-sent events."""

import contextlib
import json
import threading
import time

import httpx

from charrnn.serving.app import bind

TINY_FLAGS = ["--hidden", "32", "--embedding", "16", "--batch-size", "16", "--seq-len", "40"]


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("charrnn: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@contextlib.contextmanager
def live(app):
    """`app` on uvicorn in a thread, on a free port of 127.0.0.1 bound by charrnn.serving.app.bind; yields its URL."""
    import uvicorn

    listener = bind("127.0.0.1", 0)
    instance = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
        listener.close()


def health(url) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def busy(url) -> dict:
    """/health's counts of streams and generations (it also reports the batch's rows, queue and dtype)."""
    answer = health(url)
    return {key: answer[key] for key in ("status", "active_streams", "active_generations")}


def wait_for(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def sse(text: str) -> tuple[list[list[str]], dict]:
    """(the texts of every data event, the done event's data)."""
    chunks, done = [], None
    for event in text.strip().split("\n\n"):
        lines = event.split("\n")
        data = json.loads("".join(x[6:] for x in lines if x.startswith("data: ")))
        if lines[0] == "event: done":
            done = data
        else:
            chunks.append(data["texts"])
    return chunks, done
