"""HTTP API and web page: `charrnn serve RUN_OR_EXPORT` (FastAPI on uvicorn).

    POST /v1/generate   {prompt, length, temperature, top_k, top_p, seed, num_samples, stream, drop_unknown}
                        -> {"samples": [...], "seed": S}, or with "stream": true Server-Sent Events:
                           data: {"texts": [...]} per chunk (the prompts first), then event: done
    GET  /v1/model      architecture, vocabulary size, parameters, training metrics, limits
    GET  /health        {"status": "ok", "active_streams": N}
    GET  /              a single page that streams generations (no build step, nothing from the internet)
    GET  /openapi.json  the schema

Generation goes through the same `generate` / `stream` as the CLI and the Python API. Errors are JSON,
{"error": "..."}, with 400 for bad values (unseen prompt characters included), 413 for a body over the
limit and 422 for a malformed request.
"""


import json
import secrets
import time
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from .errors import CharRNNError


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; each is a `charrnn serve` flag."""

    max_length: int = 5000  # characters generated per sample
    max_samples: int = 16  # samples per request
    max_prompt_chars: int = 4000  # characters of prompt
    max_body_bytes: int = 65536  # size of the request body


class BodyLimit:
    """ASGI middleware: answer 413 as soon as a request body exceeds the limit (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        received, rejected = 0, False

        async def limited():
            # Past the limit: answer 413 now and tell the app the client is gone, so it stops reading.
            nonlocal received, rejected
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                if not rejected:
                    rejected = True
                    await self._reject(send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message):
            if not rejected:  # after a 413, whatever the app answers is dropped
                await send(message)

        await self.app(scope, limited, guarded)

    async def _reject(self, send):
        body = json.dumps({"error": f"request body is larger than {self.limit} bytes; send a shorter prompt"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(model, limits: ServeLimits = ServeLimits(), title: str = "charrnn"):
    """The ASGI app serving `model` (a charrnn.CharModel or a charrnn.runtime.ExportedModel)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.concurrency import run_in_threadpool

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str = Field("", description="text to start from; empty starts a fresh line")
        length: int = Field(200, description="characters to generate after the prompt")
        temperature: float = Field(1.0, description="0 = greedy")
        top_k: int = Field(0, description="0 = off")
        top_p: float = Field(1.0, description="1 = off")
        seed: int | None = Field(None, description="same seed, same text; omitted = random (returned)")
        num_samples: int = Field(1, description="samples generated together")
        stream: bool = Field(False, description="Server-Sent Events as characters are produced")
        drop_unknown: bool = Field(False, description="drop prompt characters the model never saw")

    app = FastAPI(title=title, version="1", docs_url=None, redoc_url=None,  # the docs pages load assets from a CDN
                  description="Generate text with a character-level RNN.")
    app.state.active_streams = 0
    page_html = resources.files("charrnn").joinpath("page.html").read_text(encoding="utf-8")
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(422, f"malformed request: {problems}")

    @app.exception_handler(CharRNNError)
    async def bad_value(request: Request, exc: CharRNNError):
        return error(400, str(exc))

    def check(request: GenerateRequest) -> dict[str, Any]:
        for name, value, limit, flag in (("length", request.length, limits.max_length, "--max-length"),
                                         ("num_samples", request.num_samples, limits.max_samples, "--max-samples"),
                                         ("prompt", len(request.prompt), limits.max_prompt_chars, "--max-prompt-chars")):
            if value > limit:
                what = f"{value} characters" if name == "prompt" else value
                raise CharRNNError(f"{name} is {what}; this server allows at most {limit} ({flag})")
        options = request.model_dump(exclude={"stream"})
        options["seed"] = request.seed if request.seed is not None else secrets.randbelow(2**31)
        return options

    @app.get("/health")
    async def health():
        return {"status": "ok", "active_streams": app.state.active_streams}

    @app.get("/v1/model")
    async def describe():
        return {**model.describe(), "limits": asdict(limits), "vocabulary": "".join(model.vocab.chars)}

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest, request: Request):
        options = check(body)
        if not body.stream:
            samples = await run_in_threadpool(model.generate, **options)
            return {"samples": samples, "seed": options["seed"]}
        pieces = model.stream(**options)
        first = await run_in_threadpool(next, pieces)  # bad prompts fail here, before the 200 is sent

        async def events():
            app.state.active_streams += 1
            try:
                yield f"data: {json.dumps({'texts': first})}\n\n"
                while True:
                    if await request.is_disconnected():
                        return  # the client left: stop generating
                    chunk = await run_in_threadpool(_take, pieces, 0.03)
                    if chunk is None:
                        break
                    yield f"data: {json.dumps({'texts': chunk}, ensure_ascii=False)}\n\n"
                yield f"event: done\ndata: {json.dumps({'seed': options['seed']})}\n\n"
            finally:
                try:
                    pieces.close()
                except ValueError:  # cancelled mid-chunk: that thread finishes its chunk and is not resumed
                    pass
                app.state.active_streams -= 1

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return page_html

    return app


def _take(pieces, seconds: float) -> list[str] | None:
    """Collect the characters produced within `seconds` (at least one step); None when finished."""
    chunk, deadline = None, time.perf_counter() + seconds
    for step in pieces:
        chunk = step if chunk is None else [a + b for a, b in zip(chunk, step)]
        if time.perf_counter() >= deadline:
            break
    return chunk


def serve(path, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits = ServeLimits()) -> None:
    import sys

    try:
        import uvicorn
    except ImportError:
        raise CharRNNError("serving needs fastapi and uvicorn: pip install 'charrnn[serve]'") from None
    from .cli import load_any

    model = load_any(path)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"charrnn: serving on {host}: anyone who can reach this machine can use it", file=sys.stderr)
    print(f"serving {path} on http://{host}:{port}/  (API: POST /v1/generate, GET /v1/model; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(create_app(model, limits), host=host, port=port, log_level="warning")
