"""HTTP plumbing for `charrnn serve`, shared by its own API and the OpenAI-compatible one: errors, the
body limit, request limits, and reading a generation from the batch (batcher.py).

Every error the server answers is JSON: `{"error": "..."}`, except under the OpenAI-compatible paths
(/v1/completions, /v1/models), whose clients expect OpenAI's envelope `{"error": {"message", "type",
"param", "code"}}` and 400 where FastAPI says 422. FastAPI and Starlette answer some errors themselves
({"detail": ...} for 404, 405 and bodies they cannot parse, plain text for a 500); the handlers here turn
each into the documented shape for its path, with a message that says what to send instead. Imported
only when serving (it imports FastAPI).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from charrnn.errors import CharRNNError

EXAMPLE = '{"prompt": "ROMEO:", "length": 100}'
OPENAI_EXAMPLE = '{"model": "MODEL", "prompt": "ROMEO:", "max_tokens": 100}'


class ErrorBody(BaseModel):
    error: str


class RequestError(CharRNNError):
    """A bad request: `param` names the field and `code` the kind (OpenAI's envelope reports both)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def is_openai(path: str) -> bool:
    return path == "/v1/completions" or path == "/v1/models" or path.startswith("/v1/models/")


def openai_error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    path: str = "",
    param: str | None = None,
    code: str | None = None,
) -> Response:
    """The error response for a request to `path`: {"error": message}, or OpenAI's envelope on its paths."""
    if is_openai(path):
        status = 400 if status == 422 else status  # OpenAI answers 400 for a malformed request
        body = openai_error_body(status, message, param, code)
    else:
        body = {"error": message}
    # json.dumps escapes non-ASCII: a message quoting the request (a field name, say) may hold lone
    # surrogates, which cannot be encoded as UTF-8 and would turn a 4xx into a 500.
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def documented(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for these error statuses, all {"error": str}."""
    meaning = {
        400: "a bad value (the message says which and what is allowed)",
        413: "the request body is over --max-body-bytes",
        422: "a malformed request: not a JSON object, a wrong type, an unknown field",
        500: "a bug in the server; its log has the traceback",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


class BodyLimit:
    """ASGI middleware: answer 413 as soon as a request body exceeds the limit (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, send)
        received, rejected = 0, False

        async def limited():
            # Past the limit: answer 413 now and tell the app the client is gone, so it stops reading.
            nonlocal received, rejected
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                if not rejected:
                    rejected = True
                    await self._reject(scope, send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message):
            if not rejected:  # after a 413, whatever the app answers is dropped
                await send(message)

        await self.app(scope, limited, guarded)

    async def _reject(self, scope, send):
        response = error(
            413, f"request body is larger than {self.limit} bytes; send a shorter prompt", path=scope["path"]
        )
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def _example(path: str) -> str:
    return OPENAI_EXAMPLE if is_openai(path) else EXAMPLE


def _problem(e: dict, path: str) -> str:
    where = ".".join(str(p) for p in e["loc"][1:])
    if e["type"] == "json_invalid":  # loc is (body, character offset)
        return f"the body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])} at character {where}); send an object such as {_example(path)}"
    return f"{where or 'body'}: {e['msg']}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError):
        path = request.url.path
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and not (kind == "application/json" or kind.endswith("+json")):
            # FastAPI reads only JSON bodies; `curl -d` sends application/x-www-form-urlencoded.
            return error(
                422,
                f"malformed request: the body must be JSON, sent with Content-Type: application/json "
                f"(this request says {kind or 'nothing'}); e.g. curl -H 'Content-Type: application/json' "
                f"-d '{_example(path)}'",
                path=path,
            )
        problems = exc.errors()
        first = problems[0]["loc"] if problems else ()
        param = first[1] if len(first) > 1 and first[0] == "body" and isinstance(first[1], str) else None
        return error(
            422, "malformed request: " + "; ".join(_problem(e, path) for e in problems), path=path, param=param
        )

    @app.exception_handler(CharRNNError)
    async def bad_value(request: Request, exc: CharRNNError):
        return error(
            getattr(exc, "status", 400),
            str(exc),
            path=request.url.path,
            param=getattr(exc, "param", None),
            code=getattr(exc, "code", None),
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            message = (
                f"no {path} here; the API is POST /v1/generate, GET /v1/model, GET /health, GET / (the page), "
                "GET /openapi.json, and the OpenAI-compatible POST /v1/completions and GET /v1/models"
            )
        elif exc.status_code == 405:
            message = f"{method} is not allowed on {path}; use {(exc.headers or {}).get('Allow', 'another method')}"
        elif exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "There was an error parsing the body": bytes that are not UTF-8 (latin-1, say),
            # nesting too deep for the JSON parser, a number with thousands of digits.
            cause = exc.__cause__
            why = (
                "it is not UTF-8"
                if isinstance(cause, UnicodeDecodeError)
                else (
                    "it is nested too deeply"
                    if isinstance(cause, RecursionError)
                    else str(cause).split(";")[0] or type(cause).__name__
                )
            )
            return error(
                422,
                f"malformed request: the body cannot be read as JSON ({why}); send a UTF-8 JSON object such as "
                f"{_example(path)}",
                path=path,
            )
        else:
            message = str(exc.detail)
        return error(exc.status_code, message, exc.headers, path=path)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        # Starlette still re-raises it afterwards, so the server's log gets the traceback.
        return error(
            500,
            f"internal error: {type(exc).__name__}: {exc}; the server's log has the traceback",
            path=request.url.path,
        )


# -- generation, shared by /v1/generate and /v1/completions ------------------------------------------------
def check_limits(limits, length: int, samples: int, prompts: list[str], names: tuple[str, str, str]) -> None:
    """The server's limits (a limits.ServeLimits). `names`: the request's fields for the length, the number
    of samples and the prompt, so that the message names what the client sent, and the flag that sets it."""
    longest = max((len(p) for p in prompts), default=0)
    for name, value, limit, flag in (
        (names[0], length, limits.max_length, "--max-length"),
        (names[1], samples, limits.max_samples, "--max-samples"),
        (names[2], longest, limits.max_prompt_chars, "--max-prompt-chars"),
    ):
        if value > limit:
            what = f"{value} characters" if name == names[2] else value
            raise RequestError(f"{name} is {what}; this server allows at most {limit} ({flag})", param=name.split()[0])


async def begin(batcher, options: dict, request: Request):
    """Start a generation in the batch (batcher.Batcher): (the prompts as shown, its Generation). Bad
    values fail here, before a 200 is sent; while the batch is full this waits in its queue."""
    generation = batcher.submit(options, asyncio.get_running_loop())
    try:
        first = await generation.first(request.is_disconnected)
    except BaseException:
        generation.cancel()
        raise
    return (first if first is not None else []), generation  # [] when the client left while waiting


async def slices(generation, request: Request) -> AsyncIterator[list[str]]:
    """The rest of a generation as it is produced (what arrived since the last chunk); once the client has
    gone, or the caller stops reading, the generation leaves the batch at the next step."""
    async with aclosing(generation.chunks(request.is_disconnected)) as chunks:
        async for chunk in chunks:
            yield chunk


def event_stream(request: Request, events: AsyncIterator[str], failed: Callable[[Exception], str]) -> StreamingResponse:
    """Server-Sent Events, counted in /health's active_streams. A failure after the 200 was sent cannot
    change the status: the last event, `failed(exc)`, says so, and the log has the traceback."""
    state = request.app.state

    async def guarded():
        state.active_streams += 1
        try:
            async with aclosing(events) as inner:
                async for event in inner:
                    yield event
        except Exception as exc:
            logging.getLogger("uvicorn.error").exception("generation failed mid-stream")
            yield failed(exc)
        finally:
            state.active_streams -= 1

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
