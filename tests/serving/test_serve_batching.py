"""Continuous batching: concurrent requests step together as one batch, and each still gets
exactly the text it gets alone with the same seed; a request joins at the next step, leaves at the next
step once its client has gone, and waits in a queue beyond --max-batch."""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("fastapi")

import charrnn
from charrnn.errors import CharRNNError
from charrnn.generation import loop as decoding
from charrnn.serving.app import ServeLimits, create_app
from charrnn.serving.batcher import Batcher
from conftest import run_cli
from helpers import health, live, sse, wait_for


@pytest.fixture(scope="module")
def model(tiny_run):
    return charrnn.load(tiny_run)


def recording(batcher: Batcher) -> list[int]:
    """Record the rows of every batched step (to check that requests really stepped together)."""
    sizes, step = [], batcher.backend.step

    def counted(ids, state):
        sizes.append(len(ids))
        return step(ids, state)

    batcher.backend.step = counted
    return sizes


async def never_gone() -> bool:
    return False


async def collect(generation) -> list[str]:
    first = await generation.first(never_gone)
    return decoding.join(iter([first] + [chunk async for chunk in generation.chunks(never_gone)]))


def run_together(batcher: Batcher, requests: list[dict]) -> list[list[str]]:
    """Submit every request before the worker takes any (so they join at the same step); their samples."""

    async def main():
        loop = asyncio.get_running_loop()
        with batcher._lock:  # the worker admits nothing until all are queued
            generations = [batcher.submit(options, loop) for options in requests]
        return await asyncio.gather(*map(collect, generations))

    return asyncio.run(main())


def request(
    prompt="ROMEO:", length=150, seed=0, temperature=1.0, top_k=0, top_p=1.0, num_samples=1, drop_unknown=False
):
    return dict(
        prompt=prompt,
        length=length,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_samples=num_samples,
        drop_unknown=drop_unknown,
    )


@pytest.mark.parametrize("count", [2, 8])
def test_concurrent_seeded_requests_give_exactly_the_text_each_gives_alone(model, count):
    batcher = Batcher(model)
    sizes = recording(batcher)
    requests = [request(seed=seed) for seed in range(count)]
    got = run_together(batcher, requests)
    assert max(sizes) == count  # they did step as one batch
    assert got == [model.generate(**options) for options in requests]


def test_different_settings_prompts_and_lengths_in_one_batch(model):
    batcher = Batcher(model)
    sizes = recording(batcher)
    requests = [
        request("JULIET:", 200, seed=1, temperature=0.7, top_k=5),
        request("", 120, seed=2, top_p=0.8, num_samples=3),
        request(["ROMEO:", "MARCIUS:"], 90, seed=3, temperature=1.3, num_samples=2),
        request("First", 60, seed=4, temperature=0),  # greedy: draws no random numbers
        request("A", 0, seed=5),  # nothing to generate: never joins
        request("Zoë?", 80, seed=6, drop_unknown=True),
    ]
    got = run_together(batcher, requests)
    assert max(sizes) == 1 + 3 + 4 + 1 + 1 and sizes[-1] == 1  # the shorter ones left as they finished
    assert got == [model.generate(**options) for options in requests]


def test_a_request_joining_a_running_batch_and_one_leaving_it(model):
    batcher = Batcher(model)
    sizes = recording(batcher)
    requests = [request("ROMEO:", 400, seed=10), request("JULIET:", 50, seed=11), request("MARCIUS:", 200, seed=12)]

    async def main():
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(collect(batcher.submit(requests[0], loop)))
        while len(sizes) < 20:  # the first is well under way when the others join
            await asyncio.sleep(0.001)
        rest = [batcher.submit(options, loop) for options in requests[1:]]
        return [await first] + list(await asyncio.gather(*map(collect, rest)))

    got = asyncio.run(main())
    assert 1 in sizes and 3 in sizes and sizes[-1] == 1
    assert got == [model.generate(**options) for options in requests]


def test_bad_values_fail_at_submit_and_queue_nothing(model):
    batcher = Batcher(model)
    loop = asyncio.new_event_loop()
    try:
        for bad, fragment in (
            ({"temperature": -1}, "temperature"),
            ({"prompt": "Zoë"}, "never saw"),
            ({"num_samples": 0}, "num_samples"),
        ):
            with pytest.raises(CharRNNError, match=fragment):
                batcher.submit({**request(), **bad}, loop)
    finally:
        loop.close()
    assert batcher.stats() == {"active_generations": 0, "active_rows": 0, "queued_generations": 0}


# -- through the HTTP API ---------------------------------------------------------------------------------
def generate(url: str, body: dict) -> list[str]:
    response = httpx.post(f"{url}/v1/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    if body.get("stream"):
        chunks, _done = sse(response.text)
        return decoding.join(iter(chunks))
    return response.json()["samples"]


def complete(url: str, body: dict) -> list[str]:
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        return [c["text"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]
    texts = {}
    for event in response.text.strip().split("\n\n"):
        data = event.removeprefix("data: ")
        if data != "[DONE]":
            for choice in json.loads(data)["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return [texts[i] for i in sorted(texts)]


@pytest.mark.parametrize("count", [2, 8])
def test_concurrent_http_requests_plain_streamed_and_openai_equal_alone(model, count):
    app = create_app(model, ServeLimits(max_length=2000), model_id="tiny")
    sizes = recording(app.state.batcher)
    generates = [
        {"prompt": "ROMEO:", "length": 1000, "seed": seed, "temperature": 0.9, "stream": seed % 2 == 0}
        for seed in range(count)
    ]
    completions = [
        {
            "prompt": "JULIET:",
            "max_tokens": 800,
            "seed": seed,
            "top_p": 0.9,
            "stream": seed % 2 == 1,
            "stop": ["\n\n"] if seed % 4 == 1 else None,
        }
        for seed in range(count)
    ]
    with live(app) as url, ThreadPoolExecutor(max_workers=2 * count) as pool:
        asked = [pool.submit(generate, url, body) for body in generates] + [
            pool.submit(complete, url, body) for body in completions
        ]
        got = [future.result() for future in asked]
    assert max(sizes) >= 2  # some of them stepped together (with 1000 characters each, most of them)
    alone = [model.generate("ROMEO:", length=1000, seed=b["seed"], temperature=0.9) for b in generates]
    for body in completions:
        text = model.generate("JULIET:", length=800, seed=body["seed"], top_p=0.9)[0][len("JULIET:") :]
        alone.append([text[: text.find("\n\n")] if body["stop"] and "\n\n" in text else text])
    assert got == alone


def test_a_client_that_disconnects_leaves_the_batch_at_the_next_step(model):
    app = create_app(model, ServeLimits(max_length=3_000_000), model_id="tiny")
    batcher = app.state.batcher
    with live(app) as url, ThreadPoolExecutor(max_workers=1) as pool:
        staying = pool.submit(generate, url, {"prompt": "MARCIUS:", "length": 3000, "seed": 5, "stream": True})
        with httpx.Client(timeout=30) as http:
            with http.stream(
                "POST",
                f"{url}/v1/generate",
                json={"prompt": "A", "length": 3_000_000, "num_samples": 3, "stream": True},
            ) as response:
                for received, _line in enumerate(response.iter_lines()):
                    if received == 5:
                        assert wait_for(lambda: batcher.stats()["active_rows"] == 4, 10), batcher.stats()
                        break
        # Noticed within a poll (0.03 s), gone at the next step.
        assert wait_for(lambda: batcher.stats()["active_rows"] <= 1, 2), batcher.stats()
        assert staying.result() == model.generate("MARCIUS:", length=3000, seed=5)  # the other went on, unchanged
        assert wait_for(lambda: health(url)["active_generations"] == 0, 5)


def test_requests_beyond_max_batch_wait_in_a_queue(model):
    limits = ServeLimits(max_length=3_000_000, max_samples=4, max_batch=4)
    app = create_app(model, limits)
    with live(app) as url, ThreadPoolExecutor(max_workers=1) as pool:
        with httpx.Client(timeout=30) as http:
            with http.stream(
                "POST",
                f"{url}/v1/generate",
                json={"prompt": "A", "length": 3_000_000, "num_samples": 3, "stream": True},
            ) as response:
                lines = response.iter_lines()  # kept open: leaving a loop over it would close the connection
                for _ in range(3):
                    next(lines)
                waiting = pool.submit(generate, url, {"prompt": "B", "length": 100, "num_samples": 2, "seed": 1})
                assert wait_for(lambda: health(url)["queued_generations"] == 1, 10), (
                    health(url),
                    waiting,
                )  # 3 + 2 rows > 4
                assert health(url)["active_rows"] == 3 and not waiting.done()
                # Limits still answer at once, queue or not.
                too_many = http.post(f"{url}/v1/generate", json={"prompt": "B", "num_samples": 5})
                assert too_many.status_code == 400 and "at most 4 (--max-samples)" in too_many.json()["error"]
                bad = http.post(f"{url}/v1/completions", json={"prompt": "B", "temperature": -1})
                assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
        # The first client left: the queued request joins and gives its text alone.
        assert waiting.result(timeout=30) == model.generate("B", length=100, num_samples=2, seed=1)
        assert health(url)["queued_generations"] == 0


def test_max_batch_must_hold_a_request(model, tiny_run):
    with pytest.raises(CharRNNError, match=r"--max-batch \(2\) must be at least --max-samples \(4\)"):
        create_app(model, ServeLimits(max_samples=4, max_batch=2))
    done = run_cli("serve", tiny_run, "--max-batch", "0", timeout=120)
    assert done.returncode == 2 and done.stderr == "charrnn: error: --max-batch must be at least 1; got 0\n"


def test_health_and_model_report_the_batch(model):
    app = create_app(model, ServeLimits(max_batch=32))
    with live(app) as url:
        answer = health(url)
        assert answer["max_batch"] == 32 and answer["active_rows"] == 0
        assert answer["precision"] == model.backend(1).precision  # one dtype, whatever the batch size
        assert httpx.get(f"{url}/v1/model").json()["precision"] == answer["precision"]


def test_the_onnx_export_is_served_with_batching(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from charrnn import runtime
    from charrnn.export.onnx import export

    export(tiny_run, tmp_path / "onnx")
    exported = runtime.load(tmp_path / "onnx")
    app = create_app(exported, ServeLimits(max_length=2000))
    sizes = recording(app.state.batcher)
    bodies = [
        {
            "prompt": "ROMEO:",
            "length": 600,
            "seed": seed,
            "top_k": 10,
            "stream": seed % 2 == 0,
            "num_samples": 1 + seed % 2,
        }
        for seed in range(4)
    ]
    with live(app) as url, ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda body: generate(url, body), bodies))
        assert health(url)["precision"] == "fp32"
    assert max(sizes) >= 2
    assert got == [
        exported.generate("ROMEO:", length=600, seed=b["seed"], top_k=10, num_samples=b["num_samples"]) for b in bodies
    ]


# -- at the tutorial's sizes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_model(model):
    """Random weights at hidden 256 (no training needed): products large enough for MKL to pick a
    different kernel for one row (a matrix-vector product) than for several."""
    import torch

    from charrnn.config import ModelConfig
    from charrnn.generation.torch_model import CharModel
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=len(model.vocab), embedding_size=64, hidden_size=256)
    return CharModel(CharRNN(config), model.vocab)


def test_a_rows_step_does_not_depend_on_the_other_rows(wide_model):
    import numpy as np
    import torch

    backend = wide_model.backend(1)
    rng = np.random.default_rng(0)
    state = torch.from_numpy(rng.normal(size=(1, 8, 256)).astype(np.float32) * 0.5)
    ids = rng.integers(0, len(wide_model.vocab), 8)
    alone = [backend.step(ids[i : i + 1], state[:, i : i + 1].contiguous())[0][0].copy() for i in range(8)]
    together = backend.step(ids, state.contiguous())[0]
    assert all(np.array_equal(alone[i], together[i]) for i in range(8))


def test_concurrent_seeded_requests_equal_alone_at_hidden_256(wide_model):
    batcher = Batcher(wide_model)
    requests = [request(seed=seed, length=1500, temperature=0.5) for seed in range(2)]
    got = run_together(batcher, requests)
    assert got == [wide_model.generate(**options) for options in requests]
