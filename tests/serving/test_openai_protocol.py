"""The OpenAI-compatible API's pieces on their own, without a server: the request and response models
(strict types, unknown fields, the schema's bounds), the handler's checks of a request, and stop strings."""

import pytest

pytest.importorskip("fastapi")
from pydantic import ValidationError

from charrnn.config import MAX_SEED
from charrnn.serving.http import RequestError
from charrnn.serving.limits import ServeLimits
from charrnn.serving.openai.protocol import (
    DEFAULT_MAX_TOKENS,
    MAX_STOPS,
    Completion,
    CompletionRequest,
    ModelList,
    OpenAIErrorBody,
    StreamOptions,
    completion_request,
)
from charrnn.serving.openai.serving_completion import OpenAIServingCompletion, refuse_unsupported, stop_strings
from charrnn.serving.openai.serving_models import OpenAIServingModels
from charrnn.serving.openai.stops import Stops

LIMITS = ServeLimits(max_length=400, max_samples=4, max_prompt_chars=50)


def error_types(body: dict, model=CompletionRequest) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [(e["loc"], e["type"]) for e in caught.value.errors()]


# -- the request model -------------------------------------------------------------------------------
def test_a_prompt_alone_takes_openai_defaults():
    request = CompletionRequest.model_validate({"prompt": "ROMEO:"})
    assert (request.model, request.max_tokens, request.n, request.seed, request.stop) == (None, 16, 1, None, None)
    assert (request.temperature, request.top_p, request.top_k, request.stream) == (1.0, 1.0, 0, False)
    assert request.stream_options is None and request.drop_unknown is False


def test_null_is_accepted_wherever_clients_send_it():
    fields = ("model", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options")
    extras = ("top_k", "drop_unknown", "echo", "best_of", "logprobs", "presence_penalty", "frequency_penalty")
    more = ("logit_bias", "suffix", "user")
    body = {"prompt": "A", **dict.fromkeys(fields + extras + more)}
    request = CompletionRequest.model_validate(body)
    assert all(getattr(request, name) is None for name in fields + extras + more)


@pytest.mark.parametrize(
    "prompt",
    [[[31, 42]], [31, 42], 5, None, ["A", 1], {"text": "A"}],
    ids=["token ids", "ids", "int", "null", "mixed", "object"],
)
def test_a_prompt_is_text_only(prompt):
    with pytest.raises(ValidationError, match="token ids are not supported: a token here is a character") as caught:
        CompletionRequest.model_validate({"prompt": prompt})
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [(("prompt",), "value_error")]


def test_a_prompt_is_required_and_may_be_a_list_or_empty():
    assert error_types({}) == [(("prompt",), "missing")]
    assert CompletionRequest.model_validate({"prompt": ["A", "The "]}).prompt == ["A", "The "]
    assert CompletionRequest.model_validate({"prompt": ""}).prompt == ""


@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("max_tokens", True, "int_type"),
        ("max_tokens", "5", "int_type"),
        ("max_tokens", 5.5, "int_type"),
        ("n", False, "int_type"),
        ("seed", "1", "int_type"),
        ("temperature", "1", "float_type"),
        ("top_p", True, "float_type"),
        ("stream", 1, "bool_type"),
        ("drop_unknown", "true", "bool_type"),
        ("user", 3, "string_type"),
        ("model", 1, "string_type"),
        ("logit_bias", [], "dict_type"),
    ],
)
def test_types_are_strict(field, value, kind):
    [(loc, got)] = error_types({"prompt": "A", field: value})
    assert loc[0] == field and got == kind


def test_a_whole_float_counts_as_an_integer():
    request = CompletionRequest.model_validate({"prompt": "A", "max_tokens": 5.0, "n": 2.0, "seed": 7.0})
    assert (request.max_tokens, request.n, request.seed) == (5, 2, 7)
    assert all(type(v) is int for v in (request.max_tokens, request.n, request.seed))


def test_unknown_fields_are_refused():
    assert error_types({"prompt": "A", "unknown_field": 1}) == [(("unknown_field",), "extra_forbidden")]
    assert error_types({"prompt": "A", "stream_options": {"include_usage": True, "other": 1}}) == [
        (("stream_options", "other"), "extra_forbidden")
    ]
    assert error_types({"include_usage": 1}, StreamOptions) == [(("include_usage",), "bool_type")]


def test_bounds_are_left_to_the_handler():
    # The model takes any value of the right type; the handler's checks answer with what is allowed.
    request = CompletionRequest.model_validate(
        {"prompt": "A", "max_tokens": -1, "n": 0, "temperature": -1, "top_p": 2, "echo": True, "stop": [""] * 9}
    )
    assert (request.max_tokens, request.n, request.echo, len(request.stop)) == (-1, 0, True, 9)


# -- one server's request model ------------------------------------------------------------------------
def test_a_servers_request_model_carries_its_limits_and_model():
    model = completion_request(LIMITS, "tiny")
    assert issubclass(model, CompletionRequest) and model.__name__ == "CompletionRequest"
    fields = model.model_json_schema()["properties"]
    assert fields["max_tokens"]["maximum"] == 400 and fields["max_tokens"]["minimum"] == 0
    assert fields["n"]["maximum"] == 4 and fields["n"]["minimum"] == 1
    assert (
        fields["prompt"]["maxLength"] == 50 and fields["prompt"]["maxItems"] == 4 and fields["prompt"]["minItems"] == 1
    )
    assert fields["prompt"]["items"] == {"type": "string", "maxLength": 50}
    assert fields["seed"]["maximum"] == MAX_SEED and fields["stop"]["maxItems"] == MAX_STOPS
    assert "'tiny'" in fields["model"]["description"]
    assert model.model_validate({"prompt": "A"}).max_tokens == DEFAULT_MAX_TOKENS
    # The limit-free model's checks still apply.
    assert error_types({"prompt": [[1]], "other": 1}, model) == [
        (("prompt",), "value_error"),
        (("other",), "extra_forbidden"),
    ]
    assert model.model_validate({"prompt": "A", "max_tokens": 3.0}).max_tokens == 3


def test_the_default_max_tokens_fits_a_small_max_length():
    model = completion_request(ServeLimits(max_length=10, max_samples=2), "m")
    assert model.model_validate({"prompt": "A"}).max_tokens == 10
    assert model.model_json_schema()["properties"]["max_tokens"]["default"] == 10


# -- responses -------------------------------------------------------------------------------------------
def test_response_models_hold_openais_shapes():
    completion = Completion.model_validate(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "tiny",
            "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    assert completion.choices[0].finish_reason == "length" and completion.usage.total_tokens == 2
    served = OpenAIServingModels("tiny")
    assert ModelList.model_validate(served.listed()).data[0].id == "tiny"
    body = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
    assert OpenAIErrorBody.model_validate(body).error.type == "invalid_request_error"


# -- the handler's checks ------------------------------------------------------------------------------
def handler() -> OpenAIServingCompletion:
    return OpenAIServingCompletion(None, LIMITS, OpenAIServingModels("tiny"))  # the checks need no batch


def options(**body):
    request = completion_request(LIMITS, "tiny").model_validate({"prompt": "A", **body})
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    return handler().options_for(request, prompts)


def test_options_are_model_streams_arguments():
    found, stops = options(max_tokens=20, n=2, temperature=0.5, top_p=0.9, top_k=-1, seed=3, stop="\n\n")
    assert found == dict(
        prompt="A", length=20, num_samples=2, drop_unknown=False, temperature=0.5, top_p=0.9, top_k=0, seed=3
    )
    assert stops == ["\n\n"]
    unseeded, _ = options(max_tokens=None, n=None, temperature=None, top_p=None, top_k=None)
    assert (unseeded["length"], unseeded["num_samples"], unseeded["temperature"], unseeded["top_p"]) == (
        16,
        1,
        1.0,
        1.0,
    )
    assert unseeded["top_k"] == 0 and 0 <= unseeded["seed"] <= MAX_SEED


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"max_tokens": 401}, "max_tokens", "max_tokens is 401; this server allows at most 400 (--max-length)"),
        ({"n": 5}, "n", "n is 5; this server allows at most 4 (--max-samples)"),
        ({"prompt": ["A", "B"], "n": 3}, "n", "n times 2 prompts is 6; this server allows at most 4 (--max-samples)"),
        ({"prompt": "A" * 51}, "prompt", "prompt is 51 characters; this server allows at most 50 (--max-prompt-chars)"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop must be up to 4 non-empty strings"),
        ({"stop": ""}, "stop", "stop must be up to 4 non-empty strings; got ''"),
        ({"echo": True}, "echo", "echo is not supported by this server (echo=True); leave it out or false"),
        ({"best_of": 2}, "best_of", "best_of is not supported"),
        ({"logprobs": 1}, "logprobs", "logprobs is not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty", "presence_penalty is not supported"),
        ({"frequency_penalty": 1}, "frequency_penalty", "frequency_penalty is not supported"),
        ({"logit_bias": {"1": 2}}, "logit_bias", "logit_bias is not supported"),
        ({"suffix": "x"}, "suffix", "suffix is not supported"),
    ],
)
def test_what_the_server_does_not_do_is_a_400_naming_the_field(body, param, message):
    with pytest.raises(RequestError) as caught:
        options(**body)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, None)
    assert str(caught.value).startswith(message)


def test_another_model_is_a_404_model_not_found():
    with pytest.raises(RequestError, match=r"this server serves 'tiny' \(GET /v1/models\)") as caught:
        options(model="gpt-3.5-turbo-instruct")
    assert (caught.value.status, caught.value.param, caught.value.code) == (404, "model", "model_not_found")
    assert options(model="tiny")[0]["prompt"] == "A"
    with pytest.raises(RequestError, match="the model 'other' does not exist") as caught:
        OpenAIServingModels("tiny").retrieve("other")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"


def test_the_defaults_clients_send_ask_for_nothing():
    defaults = CompletionRequest.model_validate(
        {"prompt": "A", "echo": False, "best_of": 1, "logprobs": None, "presence_penalty": 0, "frequency_penalty": 0}
        | {"logit_bias": {}, "suffix": "", "user": "someone"}
    )
    refuse_unsupported(defaults)  # no error


def test_stop_strings():
    assert stop_strings(None) == [] and stop_strings("x") == ["x"] and stop_strings(["a", "b"]) == ["a", "b"]
    assert stop_strings([]) == []
    for bad in ("", ["a", ""], ["a"] * (MAX_STOPS + 1)):
        with pytest.raises(RequestError) as caught:
            stop_strings(bad)
        assert caught.value.param == "stop"


# -- stop strings in the text -----------------------------------------------------------------------------
def test_stops_never_give_out_part_of_a_stop_string():
    stops = Stops(2, ["abc", "zz"])
    given = [stops.feed(list(pair)) for pair in zip("xxabxabcyy", "ab_z_zzzzz")]
    assert ["".join(g[0] for g in given), "".join(g[1] for g in given)] == ["xxabx", "ab_z_"]
    assert stops.reasons == ["stop", "stop"] and stops.done


def test_the_earliest_stop_string_ends_a_sample_even_across_chunks():
    stops = Stops(1, ["END", "N"])
    assert stops.feed(["the E"]) == ["the "]  # "E" could begin "END"
    assert stops.feed(["NDx"]) == [""] and stops.reasons == ["stop"]  # "END" starts before "N"
    assert stops.texts == ["the "] and stops.feed(["more"]) == [""]
    assert stops.finish() == [""] and stops.reasons == ["stop"]
    listed_later = Stops(1, ["xyz", "b"])
    assert listed_later.feed(["abxyz"]) == ["a"] and listed_later.texts == ["a"]


def test_samples_stop_on_their_own_and_the_rest_finish_by_length():
    stops = Stops(3, ["."])
    assert stops.feed(["a.b", "cd", ""]) == ["a", "cd", ""]
    assert not stops.done and stops.reasons == ["stop", None, None]
    assert stops.feed(["zz", "e", "f"]) == ["", "e", "f"]
    assert stops.finish() == ["", "", ""] and stops.reasons == ["stop", "length", "length"]
    assert stops.texts == ["a", "cde", "f"]


def test_without_stop_strings_everything_is_given_out_at_once():
    stops = Stops(1, [])
    assert stops.feed(["abc"]) == ["abc"] and stops.feed(["d"]) == ["d"]
    assert stops.finish() == [""] and stops.reasons == ["length"]


def test_a_held_back_end_is_given_out_by_finish():
    rest = Stops(1, ["abc"])
    assert rest.feed(["xxab"]) == ["xx"] and rest.finish() == ["ab"] and rest.reasons == ["length"]
