"""The OpenAI-compatible endpoint, driven by the real `openai` client against a real server on
127.0.0.1: the same generation as /v1/generate and the Python API, in OpenAI's shapes."""

import json

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient

import charrnn
from charrnn.serving.app import ServeLimits, create_app
from charrnn.serving.openai.stops import Stops
from helpers import busy, health, live, wait_for

LIMITS = ServeLimits(max_length=400, max_samples=4, max_prompt_chars=50, max_body_bytes=4000)


@pytest.fixture(scope="module")
def model(tiny_run):
    return charrnn.load(tiny_run)


@pytest.fixture(scope="module")
def server(model):
    with live(create_app(model, LIMITS, model_id="tiny")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def continuations(model, prompt, **options) -> list[str]:
    """The Python API's samples without their prompts: what a completion returns."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    samples = model.generate(prompt, **options)
    n = options.get("num_samples", 1)
    return [text[len(prompts[i // n]) :] for i, text in enumerate(samples)]


def test_a_plain_completion(client, model):
    completion = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=50, temperature=0.8, seed=1)
    assert completion.object == "text_completion" and completion.model == "tiny" and completion.id.startswith("cmpl-")
    assert isinstance(completion.created, int)
    [choice] = completion.choices
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "length", None)
    assert choice.text == continuations(model, "ROMEO:", length=50, temperature=0.8, seed=1)[0]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        6,
        50,
        56,
    )


def test_the_same_seed_gives_the_same_text_as_v1_generate(client, server):
    options = {"temperature": 0.9, "top_p": 0.95, "seed": 1234}
    generated = httpx.post(
        f"{server}/v1/generate",
        json={"prompt": "JULIET:", "length": 120, "top_k": 20, "num_samples": 2, **options},
        timeout=30,
    ).json()
    completion = client.completions.create(
        model="tiny", prompt="JULIET:", max_tokens=120, n=2, extra_body={"top_k": 20}, **options
    )
    assert [c.text for c in completion.choices] == [s.removeprefix("JULIET:") for s in generated["samples"]]
    streamed = ["", ""]
    for chunk in client.completions.create(
        model="tiny", prompt="JULIET:", max_tokens=120, n=2, stream=True, extra_body={"top_k": 20}, **options
    ):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == [c.text for c in completion.choices]


def test_n_and_a_list_of_prompts(client, model):
    completion = client.completions.create(model="tiny", prompt=["A", "The "], n=2, max_tokens=30, seed=5)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]  # prompt-major, as OpenAI's
    assert [c.text for c in completion.choices] == continuations(model, ["A", "The "], length=30, seed=5, num_samples=2)
    assert completion.choices[0].text != completion.choices[1].text
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 4 * 30


def test_streaming(client, model):
    chunks = list(
        client.completions.create(
            model="tiny", prompt="ROMEO:", max_tokens=300, seed=2, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "text_completion" and c.model == "tiny" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    *texts, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 300 and last.usage.prompt_tokens == 6
    assert [c.choices[0].finish_reason for c in texts] == [None] * (len(texts) - 1) + ["length"]
    assert "".join(c.choices[0].text for c in texts) == continuations(model, "ROMEO:", length=300, seed=2)[0]


def test_stop_strings_end_a_completion_and_are_not_returned(client, model):
    full = continuations(model, "ROMEO:", length=200, seed=3)[0]
    stop = full[40:43]  # some text the completion holds, and where it first occurs
    end = full.find(stop)
    completion = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=200, seed=3, stop=stop)
    assert (completion.choices[0].text, completion.choices[0].finish_reason) == (full[:end], "stop")
    assert completion.usage.completion_tokens == end
    streamed = list(
        client.completions.create(
            model="tiny", prompt="ROMEO:", max_tokens=200, seed=3, stop=[stop, "\x00"], stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == full[:end]
    assert streamed[-1].choices[0].finish_reason == "stop"
    missing = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=200, seed=3, stop="\x00")
    assert (missing.choices[0].text, missing.choices[0].finish_reason) == (full, "length")


def test_stops_never_give_out_part_of_a_stop_string():
    stops = Stops(2, ["abc", "zz"])
    given = [stops.feed(list(pair)) for pair in zip("xxabxabcyy", "ab_z_zzzzz")]
    assert ["".join(g[0] for g in given), "".join(g[1] for g in given)] == ["xxabx", "ab_z_"]
    assert stops.reasons == ["stop", "stop"] and stops.done
    assert all("ab" != g[0][-2:] for g in given)  # "ab" is held back until "x" shows it is no stop
    rest = Stops(1, ["abc"])
    assert rest.feed(["xxab"]) == ["xx"] and rest.finish() == ["ab"] and rest.reasons == ["length"]


def test_bad_requests_are_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=401)
    assert error.value.status_code == 400 and error.value.param == "max_tokens"
    assert error.value.body == {
        "message": "max_tokens is 401; this server allows at most 400 (--max-length)",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": None,
    }
    with pytest.raises(openai.BadRequestError, match="never saw: 'Z', 'ë'") as error:
        client.completions.create(model="tiny", prompt="Zoë", max_tokens=5)
    assert error.value.param == "prompt"
    with pytest.raises(openai.BadRequestError, match="n times 2 prompts is 6; this server allows at most 4"):
        client.completions.create(model="tiny", prompt=["A", "B"], n=3, max_tokens=5)
    with pytest.raises(openai.BadRequestError, match="presence_penalty is not supported") as error:
        client.completions.create(model="tiny", prompt="A", presence_penalty=0.5)
    assert error.value.param == "presence_penalty"
    with pytest.raises(openai.BadRequestError, match="temperature must be a non-negative finite number"):
        client.completions.create(model="tiny", prompt="A", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="unknown_field: Extra inputs are not permitted"):
        client.completions.create(model="tiny", prompt="A", extra_body={"unknown_field": 1})
    with pytest.raises(openai.BadRequestError, match="token ids are not supported") as error:
        client.completions.create(model="tiny", prompt=[[31, 42]])
    assert error.value.param == "prompt"
    with pytest.raises(openai.BadRequestError, match="echo is not supported"):
        client.completions.create(model="tiny", prompt="A", echo=True)
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="A")
    assert error.value.code == "model_not_found" and "this server serves 'tiny'" in error.value.message
    with pytest.raises(openai.APIStatusError) as error:
        client.completions.create(model="tiny", prompt="A" * 5000)
    assert error.value.status_code == 413 and error.value.body["type"] == "invalid_request_error"


def test_defaults_that_clients_send_are_accepted(client, model):
    completion = client.completions.create(
        model="tiny",
        prompt="A",
        max_tokens=10,
        seed=4,
        echo=False,
        best_of=1,
        logprobs=None,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        user="someone",
        suffix=None,
        top_p=1,
        n=1,
    )
    assert completion.choices[0].text == continuations(model, "A", length=10, seed=4)[0]
    assert (
        client.completions.create(model="tiny", prompt="A", extra_body={"top_k": -1}).choices[0].finish_reason
        == "length"
    )


def test_models(client):
    assert [(m.id, m.object, m.owned_by) for m in client.models.list()] == [("tiny", "model", "charrnn")]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")


def test_a_client_leaving_a_stream_stops_its_generation(model):
    with live(create_app(model, ServeLimits(max_length=3_000_000), model_id="tiny")) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
            stream = client.completions.create(model="tiny", prompt="A", max_tokens=3_000_000, stream=True)
            for received, _chunk in enumerate(stream):
                if received == 3:
                    assert health(url)["active_generations"] == 1
                    break
            stream.close()
        assert wait_for(lambda: busy(url) == {"status": "ok", "active_streams": 0, "active_generations": 0}, 5)


def test_a_bug_is_an_openai_500_and_mid_stream_an_error_event(model):
    class BreaksMidway:
        vocab = model.vocab

        def stream(self, **options):
            if options["prompt"] == "now":
                raise RuntimeError("stream broke")
            yield [options["prompt"]]
            yield ["x"]
            raise RuntimeError("step broke")

    with TestClient(create_app(BreaksMidway(), LIMITS, model_id="tiny"), raise_server_exceptions=False) as broken:
        response = broken.post("/v1/completions", json={"prompt": "now"})
        assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
        assert response.json()["error"]["message"].startswith("internal error: RuntimeError: stream broke")
        response = broken.post("/v1/completions", json={"prompt": "A", "stream": True})
    assert response.status_code == 200
    last = response.text.strip().split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: "))["error"] == {
        "message": "internal error: RuntimeError: step broke; the server's log has the traceback",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_the_schema_documents_the_openai_endpoints(server):
    schema = httpx.get(f"{server}/openapi.json", timeout=30).json()
    completions = schema["paths"]["/v1/completions"]["post"]["responses"]
    assert {"200", "400", "404", "413", "500"} <= set(completions) and "422" not in completions
    assert set(completions["200"]["content"]) == {"application/json", "text/event-stream"}
    for status in ("400", "404", "413", "500"):
        assert completions[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/OpenAIErrorBody"
        }
    fields = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert (
        fields["seed"]["maximum"] == 2**64 - 1
        and fields["max_tokens"]["maximum"] == 400
        and fields["n"]["maximum"] == 4
    )
    assert {"/v1/models", "/v1/models/{name}"} <= set(schema["paths"])
