"""The routes of charrnn's own API: POST /v1/generate, GET /v1/model, GET /health, and the page at GET /.
Generation goes through http.begin and slices, as the OpenAI-compatible API's does."""

import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse

from charrnn.config import MAX_SEED, random_seed
from charrnn.generation import loop as decoding
from charrnn.serving.batcher import Batcher
from charrnn.serving.card import ModelCard
from charrnn.serving.http import begin, check_limits, documented, event_stream, slices
from charrnn.serving.limits import ServeLimits
from charrnn.serving.protocol import SSE_EVENT, Generated, GenerateRequest, Health, generate_request

GENERATE_RESPONSES = {
    200: {
        "model": Generated,
        "description": 'the samples, each the prompt and its continuation; with "stream": true, '
        'Server-Sent Events: data: {"texts": [...]} per chunk (the prompts first), then event: done, data: {"seed": S}',
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    **documented(400, 413, 422, 500),
}


def router(model, batcher: Batcher, limits: ServeLimits) -> APIRouter:
    """/health, /v1/model and /v1/generate for `model`, generated in `batcher`'s batch."""
    body_model = generate_request(limits)
    api = APIRouter()

    @api.get("/health", response_model=Health)
    async def health(request: Request):
        return {
            "status": "ok",
            "active_streams": request.app.state.active_streams,
            **batcher.stats(),
            "max_batch": limits.max_batch,
            "precision": batcher.precision,
        }

    card = ModelCard(model, limits, batcher.precision)

    @api.get("/v1/model", response_model=dict[str, Any])
    async def describe():
        return await card.get()

    @api.post("/v1/generate", responses=GENERATE_RESPONSES)
    async def generate(body: body_model, request: Request):
        return await generated(body, request, batcher, limits)

    return api


def page_router() -> APIRouter:
    """GET /: the page (page.html, read once)."""
    page_html = resources.files("charrnn.serving").joinpath("page.html").read_text(encoding="utf-8")
    api = APIRouter()

    @api.get("/", response_class=HTMLResponse)
    async def page():
        return page_html

    return api


def options_for(body: GenerateRequest, limits: ServeLimits) -> dict[str, Any]:
    """model.stream's arguments for a request, with a seed; a RequestError for one over the limits."""
    check_limits(limits, body.length, body.num_samples, [body.prompt], ("length", "num_samples", "prompt"))
    options = body.model_dump(exclude={"stream"})
    options["seed"] = body.seed if body.seed is not None else random_seed()
    return options


async def generated(body: GenerateRequest, request: Request, batcher: Batcher, limits: ServeLimits):
    """The answer to POST /v1/generate: the samples, or their Server-Sent Events."""
    options = options_for(body, limits)
    first, generation = await begin(batcher, options, request)
    if not body.stream:
        collected = [first]
        async for chunk in slices(generation, request):
            collected.append(chunk)
        # Had the client left, nobody reads this answer (and the generation stopped early).
        return {"samples": decoding.join(iter(collected)), "seed": options["seed"]}
    return event_stream(request, events(first, generation, request, options["seed"]), failed)


async def events(first: list[str], generation, request: Request, seed: int) -> AsyncIterator[str]:
    yield f"data: {json.dumps({'texts': first})}\n\n"
    async for chunk in slices(generation, request):
        yield f"data: {json.dumps({'texts': chunk}, ensure_ascii=False)}\n\n"
    yield f"event: done\ndata: {json.dumps({'seed': seed})}\n\n"


def failed(exc: Exception) -> str:
    """The last event of a stream whose generation failed after the 200 was sent."""
    return f"event: error\ndata: {json.dumps({'error': f'internal error: {type(exc).__name__}: {exc}'})}\n\n"


def patch_openapi(app: FastAPI) -> None:
    default_openapi = app.openapi

    def openapi() -> dict:
        # FastAPI's OpenAPI models hold bounds as floats, and 2**64 - 1 is not one (it rounds up to 2**64).
        schema = app.openapi_schema or default_openapi()
        schema["components"]["schemas"]["GenerateRequest"]["properties"]["seed"]["maximum"] = MAX_SEED
        return schema

    app.openapi = openapi
