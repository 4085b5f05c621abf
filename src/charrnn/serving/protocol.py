"""The request and response models of charrnn's own API (/v1/generate, /health), and the Server-Sent
Event of a streamed generation. `GenerateRequest` is the request any server takes; `generate_request`
gives one server's, whose schema carries that server's limits."""

from pydantic import BaseModel, ConfigDict, Field, create_model

from charrnn.config import MAX_SEED
from charrnn.serving.fields import Integer, bounds, narrowed
from charrnn.serving.limits import ServeLimits

DEFAULT_LENGTH = 200  # characters, or --max-length when that is smaller


class GenerateRequest(BaseModel):
    # Strict: JSON true is not the number 1, 0 is not false, 1.5 is not an integer. The ranges are in the
    # schema for clients, and checked by the same code as the CLI's (decoding.check_request and the
    # server's limits), whose 400s say what is allowed; test_serve_reliability checks that the schema and
    # those checks agree.
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str = Field("", description="text to start from; empty starts a fresh line")
    length: Integer = Field(DEFAULT_LENGTH, description="characters to generate after the prompt", **bounds(minimum=0))
    temperature: float = Field(1.0, description="0 = greedy", **bounds(minimum=0))
    top_k: Integer = Field(0, description="0 = off", **bounds(minimum=0))
    top_p: float = Field(1.0, description="1 = off", **bounds(exclusiveMinimum=0, maximum=1))
    seed: Integer | None = Field(
        None, description="same seed, same text; omitted = random (returned)", **bounds(minimum=0, maximum=MAX_SEED)
    )
    num_samples: Integer = Field(1, description="samples generated together", **bounds(minimum=1))
    stream: bool = Field(False, description="Server-Sent Events as characters are produced")
    drop_unknown: bool = Field(False, description="drop prompt characters the model never saw")


def generate_request(limits: ServeLimits) -> type[GenerateRequest]:
    """GenerateRequest as a server with these limits takes it: the limits in its schema, and a default
    length within them."""
    return create_model(
        "GenerateRequest",
        __base__=GenerateRequest,
        prompt=narrowed(GenerateRequest, "prompt", maxLength=limits.max_prompt_chars),
        length=narrowed(
            GenerateRequest, "length", default=min(DEFAULT_LENGTH, limits.max_length), maximum=limits.max_length
        ),
        num_samples=narrowed(GenerateRequest, "num_samples", maximum=limits.max_samples),
    )


class Generated(BaseModel):
    samples: list[str]
    seed: int


class Health(BaseModel):
    status: str
    active_streams: int = Field(description="streaming responses in progress")
    active_generations: int = Field(description="requests generating in the batch, streamed or not")
    active_rows: int = Field(description="rows (samples) stepped together at present")
    queued_generations: int = Field(description="requests waiting for rows (the batch is full)")
    max_batch: int = Field(description="the most rows stepped together (--max-batch)")
    precision: str | None = Field(description="the dtype every batch steps in (fp32 or bf16), whatever its size")


# One Server-Sent Event of a streamed generation (OpenAPI 3.1: the event-stream `schema` is per event).
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {
            "enum": ["message", "done", "error"],
            "description": "message: a chunk; done or error: the last event",
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": 'a chunk: {"texts": [one string per sample]} (the first holds the prompts); '
            'done: {"seed": S}; error: {"error": "internal error: ..."}',
        },
    },
}
