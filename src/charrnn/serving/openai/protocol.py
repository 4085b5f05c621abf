"""The request and response models of the OpenAI-compatible API, in OpenAI's shapes.

`CompletionRequest` is the request any server takes: strict types, unknown fields refused (OpenAI:
"Unrecognized request argument"), the fields that OpenAI clients send with their defaults (echo,
best_of, logprobs, the penalties, logit_bias, suffix, user) accepted, and top_k and drop_unknown as
extensions. `completion_request` gives one server's, whose schema names its model and carries its
limits. The ranges are schema only: the handler's checks (serving_completion.py) enforce them, with 400s
that say what is allowed.
"""

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from charrnn.config import MAX_SEED
from charrnn.serving.fields import Integer, bounds, narrowed
from charrnn.serving.limits import ServeLimits

DEFAULT_MAX_TOKENS = 16  # OpenAI's default
MAX_STOPS = 4  # OpenAI's limit on stop sequences


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool | None = Field(False, description="a last chunk with usage (and no choices) before [DONE]")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = Field(None, description="the served model's id (as GET /v1/models lists); omitted = that one")
    prompt: str | list[str] = Field(
        description="text to continue, or a list of texts (each gets n completions); '' starts a fresh line",
        **bounds(minItems=1),
    )
    max_tokens: Integer | None = Field(
        DEFAULT_MAX_TOKENS, description="characters to generate (a token is a character)", **bounds(minimum=0)
    )
    temperature: float | None = Field(1.0, description="0 = greedy", **bounds(minimum=0))
    top_p: float | None = Field(1.0, description="1 = off", **bounds(exclusiveMinimum=0, maximum=1))
    n: Integer | None = Field(
        1, description="completions per prompt; n times the prompts is at most --max-samples", **bounds(minimum=1)
    )
    seed: Integer | None = Field(
        None,
        description="same seed, same text (as /v1/generate's); omitted = random",
        **bounds(minimum=0, maximum=MAX_SEED),
    )
    stop: str | list[str] | None = Field(
        None,
        description=f"up to {MAX_STOPS} strings that end a completion (not returned)",
        **bounds(minLength=1, maxItems=MAX_STOPS, items={"type": "string", "minLength": 1}),
    )
    stream: bool | None = Field(False, description="Server-Sent Events of text_completion chunks, then data: [DONE]")
    stream_options: StreamOptions | None = None
    top_k: Integer | None = Field(
        0, description="an extension (as vLLM's): sample from the k likeliest; 0 or -1 = off", **bounds(minimum=-1)
    )
    drop_unknown: bool | None = Field(False, description="an extension: drop prompt characters the model never saw")
    # Accepted with the values that ask for nothing (clients send them as defaults); others are a 400.
    echo: bool | None = Field(False, description="false only: the prompt is not repeated", **bounds(enum=[False, None]))
    best_of: Integer | None = Field(None, description="1 only", **bounds(enum=[1, None]))
    logprobs: Integer | None = Field(None, description="null only: no log-probabilities", **bounds(enum=[None]))
    presence_penalty: float | None = Field(0.0, description="0 only", **bounds(enum=[0, None]))
    frequency_penalty: float | None = Field(0.0, description="0 only", **bounds(enum=[0, None]))
    logit_bias: dict[str, float] | None = Field(None, description="empty only", **bounds(maxProperties=0))
    suffix: str | None = Field(None, description="empty only: no insertion", **bounds(maxLength=0))
    user: str | None = Field(None, description="ignored")

    @field_validator("prompt", mode="before")
    @classmethod
    def text_only(cls, value):
        # OpenAI also takes token ids (lists of integers); pydantic's message for them lists every branch.
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(p, str) for p in value)):
            return value
        raise ValueError(
            "must be a string or a list of strings (token ids are not supported: a token here is a character)"
        )


def completion_request(limits: ServeLimits, model_id: str) -> type[CompletionRequest]:
    """CompletionRequest as a server with these limits, serving `model_id`, takes it: the limits in its
    schema, and a default max_tokens within them."""
    chars = limits.max_prompt_chars
    return create_model(
        "CompletionRequest",
        __base__=CompletionRequest,
        model=narrowed(
            CompletionRequest,
            "model",
            description=f"the served model's id ({model_id!r}, as GET /v1/models lists); omitted = that one",
        ),
        prompt=narrowed(
            CompletionRequest,
            "prompt",
            maxLength=chars,
            maxItems=limits.max_samples,
            items={"type": "string", "maxLength": chars},
        ),
        max_tokens=narrowed(
            CompletionRequest,
            "max_tokens",
            default=min(DEFAULT_MAX_TOKENS, limits.max_length),
            maximum=limits.max_length,
        ),
        n=narrowed(CompletionRequest, "n", maximum=limits.max_samples),
    )


class Choice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = Field(
        description="length, or stop (a stop string ended it); null in a chunk before the last"
    )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="characters of the prompts")
    completion_tokens: int = Field(description="characters of the returned completions")
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: str = Field(description='"text_completion"')
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: str = Field(description='"model"')
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = Field(description='"list"')
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, or server_error for a 500")
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None = Field(description="model_not_found for a wrong model; else null")


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail
