"""HTTP API and web page: `charrnn serve RUN_OR_EXPORT` (FastAPI on uvicorn).

    POST /v1/generate   {prompt, length, temperature, top_k, top_p, seed, num_samples, stream, drop_unknown}
                        -> {"samples": [...], "seed": S}, or with "stream": true Server-Sent Events:
                           data: {"texts": [...]} per chunk (the prompts first), then event: done
                           (or event: error, {"error": ...}, should generation fail midway)
    GET  /v1/model      architecture, vocabulary size, parameters, training metrics, limits
    POST /v1/completions, GET /v1/models   OpenAI-compatible (serve_openai.py): the same generation
    GET  /health        {"status": "ok", "active_streams", "active_generations", "active_rows",
                         "queued_generations", "max_batch", "precision"}
    GET  /              a single page that streams generations (no build step, nothing from the internet)
    GET  /openapi.json  the schema

Generation is batched continuously (batching.py, docs/serving.md): one worker thread steps the rows of
every active request together, one character per step, with at most --max-batch rows; a new request
joins at the next step (primed on its own), a finished one or one whose client left leaves at the next
step, and requests beyond --max-batch wait in a FIFO queue. Each request keeps its own state, sampling
settings and random stream, and the batch steps in one dtype whatever its size, so a request's text is
what the CLI and the Python API give for the same seed. All compute runs on that worker (with
--threads threads, default the cores); the event loop only moves text. Both this API and the
OpenAI-compatible one read generations through serve_http.begin and slices. Every error is JSON, {"error": "..."} (see serve_http.py): 400 for bad values (unseen prompt
characters included), 404 / 405 for a wrong path or method, 413 for a body over the limit, 422 for a
malformed request, 500 for a bug; the OpenAI-compatible paths use OpenAI's error envelope instead.
"""

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from charrnn.config import MAX_SEED, random_seed
from charrnn.errors import CharRNNError
from charrnn.generation import loop as decoding


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; each is a `charrnn serve` flag."""

    max_length: int = 5000  # characters generated per sample
    max_samples: int = 16  # samples per request
    max_prompt_chars: int = 4000  # characters of prompt
    max_body_bytes: int = 65536  # size of the request body
    max_batch: int = 64  # rows (samples of all requests) stepped together; more requests wait in a queue

    def check(self) -> None:
        """A CharRNNError naming the flag for a limit that cannot work."""
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CharRNNError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
        if self.max_batch < self.max_samples:  # a request's rows always step together
            raise CharRNNError(f"--max-batch ({self.max_batch}) must be at least --max-samples ({self.max_samples})")


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


def create_app(model, limits: ServeLimits = ServeLimits(), title: str = "charrnn", model_id: str = "charrnn"):
    """The ASGI app serving `model` (a charrnn.CharModel or a charrnn.runtime.ExportedModel); `model_id`
    is its name in the OpenAI-compatible API."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse
    from pydantic import BaseModel, ConfigDict, Field

    from charrnn.serving import openai_api as serve_openai
    from charrnn.serving.batcher import Batcher
    from charrnn.serving.http import (
        BodyLimit,
        Integer,
        begin,
        bounds,
        check_limits,
        documented,
        event_stream,
        install_error_handlers,
        slices,
    )

    class GenerateRequest(BaseModel):
        # Strict: JSON true is not the number 1, 0 is not false, 1.5 is not an integer. The ranges are
        # in the schema for clients, and checked by the same code as the CLI's (decoding.check_request
        # and the limits below), whose 400s say what is allowed; test_serve_reliability checks that
        # the schema and those checks agree.
        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: str = Field(
            "", description="text to start from; empty starts a fresh line", **bounds(maxLength=limits.max_prompt_chars)
        )
        length: Integer = Field(
            min(200, limits.max_length),  # a default that fits --max-length
            description="characters to generate after the prompt",
            **bounds(minimum=0, maximum=limits.max_length),
        )
        temperature: float = Field(1.0, description="0 = greedy", **bounds(minimum=0))
        top_k: Integer = Field(0, description="0 = off", **bounds(minimum=0))
        top_p: float = Field(1.0, description="1 = off", **bounds(exclusiveMinimum=0, maximum=1))
        seed: Integer | None = Field(
            None, description="same seed, same text; omitted = random (returned)", **bounds(minimum=0, maximum=MAX_SEED)
        )
        num_samples: Integer = Field(
            1, description="samples generated together", **bounds(minimum=1, maximum=limits.max_samples)
        )
        stream: bool = Field(False, description="Server-Sent Events as characters are produced")
        drop_unknown: bool = Field(False, description="drop prompt characters the model never saw")

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

    app = FastAPI(
        title=title,
        version="1",
        docs_url=None,
        redoc_url=None,  # the docs pages load assets from a CDN
        description='Generate text with a character-level RNN. Every error is JSON {"error": "..."}.',
        responses=documented(500),
    )
    limits.check()
    batcher = Batcher(model, limits.max_batch)
    app.state.active_streams = 0
    app.state.batcher = batcher
    page_html = resources.files("charrnn.serving").joinpath("page.html").read_text(encoding="utf-8")
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    install_error_handlers(app)

    def check(request: GenerateRequest) -> dict[str, Any]:
        check_limits(limits, request.length, request.num_samples, [request.prompt], ("length", "num_samples", "prompt"))
        options = request.model_dump(exclude={"stream"})
        options["seed"] = request.seed if request.seed is not None else random_seed()
        return options

    default_openapi = app.openapi

    def openapi() -> dict:
        # FastAPI's OpenAPI models hold bounds as floats, and 2**64 - 1 is not one (it rounds up to 2**64).
        schema = app.openapi_schema or default_openapi()
        schema["components"]["schemas"]["GenerateRequest"]["properties"]["seed"]["maximum"] = MAX_SEED
        return schema

    app.openapi = openapi

    @app.get("/health", response_model=Health)
    async def health():
        return {
            "status": "ok",
            "active_streams": app.state.active_streams,
            **batcher.stats(),
            "max_batch": limits.max_batch,
            "precision": batcher.precision,
        }

    @app.get("/v1/model", response_model=dict[str, Any])
    async def describe():
        return {
            **model.describe(),
            "limits": asdict(limits),
            "precision": batcher.precision,
            "vocabulary": "".join(model.vocab.chars),
        }

    @app.post(
        "/v1/generate",
        responses={
            200: {
                "model": Generated,
                "description": 'the samples, each the prompt and its continuation; with "stream": true, '
                'Server-Sent Events: data: {"texts": [...]} per chunk (the prompts first), then event: done, data: {"seed": S}',
                "content": {"text/event-stream": {"schema": SSE_EVENT}},
            },
            **documented(400, 413, 422, 500),
        },
    )
    async def generate(body: GenerateRequest, request: Request):
        options = check(body)
        first, generation = await begin(batcher, options, request)
        if not body.stream:
            collected = [first]
            async for chunk in slices(generation, request):
                collected.append(chunk)
            # Had the client left, nobody reads this answer (and the generation stopped early).
            return {"samples": decoding.join(iter(collected)), "seed": options["seed"]}

        async def events():
            yield f"data: {json.dumps({'texts': first})}\n\n"
            async for chunk in slices(generation, request):
                yield f"data: {json.dumps({'texts': chunk}, ensure_ascii=False)}\n\n"
            yield f"event: done\ndata: {json.dumps({'seed': options['seed']})}\n\n"

        def failed(exc: Exception) -> str:
            return f"event: error\ndata: {json.dumps({'error': f'internal error: {type(exc).__name__}: {exc}'})}\n\n"

        return event_stream(request, events(), failed)

    serve_openai.install(app, batcher, limits, model_id)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return page_html

    return app


def serve(
    path,
    load,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = ServeLimits(),
    model_name: str | None = None,
    threads: int | None = None,
    precision: str = "auto",
) -> None:
    """Serve the run or export at `path`, which `load(threads, precision)` loads (the CLI passes
    generation's one loader, so this package never imports PyTorch itself). `model_name` is its id in the
    OpenAI-compatible API (default: `path` as given, as vLLM names a model by its path); `threads`: the
    compute threads (default the cores)."""
    import sys

    try:
        import uvicorn
    except ImportError:
        raise CharRNNError("serving needs fastapi and uvicorn: pip install 'charrnn[serve]'") from None
    limits.check()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise CharRNNError(f"--threads must be at least 1; got {threads}")
    listener = bind(host, port)  # before loading the model: a busy port fails at once
    model = load(threads, precision)
    port = listener.getsockname()[1]  # the one the system picked for --port 0
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"charrnn: serving on {host}: anyone who can reach this machine can use it", file=sys.stderr)
    model_id = model_name or Path(path).as_posix()
    print(
        f"serving {path} on http://{host}:{port}/  (API: POST /v1/generate, GET /v1/model; OpenAI-compatible: "
        f"POST /v1/completions with model {model_id!r}; Ctrl-C stops)",
        file=sys.stderr,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(model, limits, model_id=model_id), log_level="warning"))
    with listener:
        server.run(sockets=[listener])


def bind(host: str, port: int):
    """A listening socket on host:port, or a CharRNNError saying what to change (uvicorn would print a
    traceback for a port out of range and a log line for one in use)."""
    import errno
    import os
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise CharRNNError(f"--port must be from 0 to 65535 (0 picks a free one); got {port!r}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family)
    except socket.gaierror as exc:
        raise CharRNNError(
            f"cannot bind to --host {host}: {exc.strerror}; use an address of this machine, e.g. 127.0.0.1"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CharRNNError(
                f"port {port} on {host} is already in use; stop what uses it or pick another with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise CharRNNError(
                f"no permission to listen on port {port}; ports below 1024 need root: use --port 8000"
            ) from None
        raise CharRNNError(
            f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}; try another --host or --port"
        ) from None
