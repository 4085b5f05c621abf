"""charrnn's own request model on its own, without a server: strict types, unknown fields refused, and one
server's limits in its schema."""

import pytest
from pydantic import ValidationError

from charrnn.config import MAX_SEED
from charrnn.serving.limits import ServeLimits
from charrnn.serving.protocol import DEFAULT_LENGTH, GenerateRequest, Health, generate_request


def test_an_empty_body_takes_the_defaults():
    request = GenerateRequest.model_validate({})
    assert request.model_dump() == dict(
        prompt="",
        length=DEFAULT_LENGTH,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        seed=None,
        num_samples=1,
        stream=False,
        drop_unknown=False,
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("length", True),
        ("length", "5"),
        ("length", 1.5),
        ("top_k", False),
        ("temperature", "1"),
        ("stream", 1),
        ("prompt", 5),
        ("seed", "1"),
    ],
)
def test_types_are_strict(field, value):
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate({field: value})
    assert [e["loc"][0] for e in caught.value.errors()] == [field]


def test_nulls_and_unknown_fields():
    assert GenerateRequest.model_validate({"seed": None}).seed is None
    with pytest.raises(ValidationError, match="Input should be a valid integer"):
        GenerateRequest.model_validate({"length": None})
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate({"max_tokens": 5})
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [(("max_tokens",), "extra_forbidden")]


def test_a_whole_float_counts_as_an_integer():
    request = GenerateRequest.model_validate({"length": 5.0, "num_samples": 2.0, "seed": 3.0})
    assert (request.length, request.num_samples, request.seed) == (5, 2, 3)


def test_a_servers_request_model_carries_its_limits():
    model = generate_request(ServeLimits(max_length=60, max_samples=3, max_prompt_chars=20))
    assert issubclass(model, GenerateRequest) and model.__name__ == "GenerateRequest"
    fields = model.model_json_schema()["properties"]
    assert fields["prompt"]["maxLength"] == 20 and fields["length"] == {
        "default": 60,
        "description": "characters to generate after the prompt",
        "maximum": 60,
        "minimum": 0,
        "title": "Length",
        "type": "integer",
    }
    assert fields["num_samples"]["maximum"] == 3 and fields["seed"]["maximum"] == MAX_SEED
    assert model.model_validate({}).length == 60  # the default fits --max-length
    assert generate_request(ServeLimits()).model_validate({}).length == DEFAULT_LENGTH
    # The bounds are the schema's; the server's checks enforce them.
    assert model.model_validate({"length": 61, "num_samples": 9}).length == 61
    with pytest.raises(ValidationError):
        model.model_validate({"length": True, "other": 1})


def test_health_reports_the_batch():
    assert set(Health.model_fields) == {
        "status",
        "active_streams",
        "active_generations",
        "active_rows",
        "queued_generations",
        "max_batch",
        "precision",
    }
