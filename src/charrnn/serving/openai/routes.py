"""The OpenAI-compatible routes, so that existing clients (the `openai` package, LangChain, LiteLLM, curl
recipes written for vLLM or llama.cpp's server) work unchanged:

    POST /v1/completions     {model, prompt (a string or a list), max_tokens, temperature, top_p, n, seed,
                              stop, stream, stream_options, top_k (an extension, as vLLM's), drop_unknown}
    GET  /v1/models          {"object": "list", "data": [{"id": MODEL_ID, "object": "model", ...}]}
    GET  /v1/models/{id}     that entry, or 404 model_not_found

Errors use OpenAI's envelope (http.error), with 400 where FastAPI says 422.
"""

from fastapi import APIRouter, FastAPI, Request

from charrnn.config import MAX_SEED
from charrnn.serving.batcher import Batcher
from charrnn.serving.limits import ServeLimits
from charrnn.serving.openai.protocol import Completion, ModelCard, ModelList, OpenAIErrorBody, completion_request
from charrnn.serving.openai.serving_completion import OpenAIServingCompletion
from charrnn.serving.openai.serving_models import OpenAIServingModels

ERROR_MEANINGS = {
    400: "a bad or malformed request (OpenAI answers 400 for both); the message says what to send",
    404: "model_not_found: the request names another model than the one served",
    413: "the request body is over --max-body-bytes",
    500: "a bug in the server; its log has the traceback",
}

# One Server-Sent Event of a streamed completion (OpenAPI 3.1: the event-stream `schema` is per event).
CHUNK_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "a text_completion chunk (JSON: id, object, created, model, choices with "
            "index, text, logprobs, finish_reason; usage when asked for), then [DONE]",
        }
    },
}


def documented(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for these error statuses, all in OpenAI's envelope."""
    return {status: {"model": OpenAIErrorBody, "description": ERROR_MEANINGS[status]} for status in statuses}


COMPLETION_RESPONSES = {
    200: {
        "description": 'the completions; with "stream": true, Server-Sent Events: one text_completion chunk '
        "per slice of generation, then data: [DONE]",
        "content": {"text/event-stream": {"schema": CHUNK_EVENT}},
    },
    **documented(400, 404, 413, 500),
}


def router(completion: OpenAIServingCompletion, served: OpenAIServingModels, limits: ServeLimits) -> APIRouter:
    """/v1/models, /v1/models/{id} and /v1/completions, whose request schema carries `limits`."""
    body_model = completion_request(limits, served.model_id)
    api = APIRouter()

    @api.get("/v1/models", response_model=ModelList, responses=documented(500))
    async def models():
        return served.listed()

    @api.get("/v1/models/{name:path}", response_model=ModelCard, responses=documented(404, 500))
    async def one_model(name: str):
        return served.retrieve(name)

    @api.post("/v1/completions", response_model=Completion, responses=COMPLETION_RESPONSES)
    async def completions(body: body_model, request: Request):
        return await completion.create(body, request)

    return api


def install(app: FastAPI, batcher: Batcher, limits: ServeLimits, model_id: str) -> None:
    """Add the OpenAI-compatible routes to `app` (app.create_app's), serving the model of `batcher` as
    `model_id`."""
    models = OpenAIServingModels(model_id)
    app.include_router(router(OpenAIServingCompletion(batcher, limits, models), models, limits))
    default_openapi = app.openapi

    def openapi() -> dict:
        schema = default_openapi()
        # FastAPI adds a 422 to every operation with input; these answer 400 instead, as OpenAI does.
        schema["paths"]["/v1/completions"]["post"]["responses"].pop("422", None)
        schema["paths"]["/v1/models/{name}"]["get"]["responses"].pop("422", None)
        # FastAPI's OpenAPI models hold bounds as floats, and 2**64 - 1 is not one (it rounds up to 2**64).
        schema["components"]["schemas"]["CompletionRequest"]["properties"]["seed"]["maximum"] = MAX_SEED
        return schema

    app.openapi = openapi
