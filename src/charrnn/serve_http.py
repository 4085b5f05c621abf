"""HTTP plumbing for `charrnn serve`: every error the server answers is JSON `{"error": "..."}`.

FastAPI and Starlette answer some errors themselves ({"detail": ...} for 404, 405 and bodies they cannot
parse, plain text for a 500); the handlers here turn each into the one documented shape, with a message
that says what to send instead. Imported only when serving (it imports FastAPI).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from .errors import CharRNNError

EXAMPLE = '{"prompt": "ROMEO:", "length": 100}'


class ErrorBody(BaseModel):
    error: str


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    # json.dumps escapes non-ASCII: a message quoting the request (a field name, say) may hold lone
    # surrogates, which cannot be encoded as UTF-8 and would turn a 4xx into a 500.
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json", headers=headers)


def documented(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for these error statuses, all {"error": str}."""
    meaning = {400: "a bad value (the message says which and what is allowed)",
               413: "the request body is over --max-body-bytes",
               422: "a malformed request: not a JSON object, a wrong type, an unknown field",
               500: "a bug in the server; its log has the traceback"}
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
        response = error(413, f"request body is larger than {self.limit} bytes; send a shorter prompt")
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def _problem(e: dict) -> str:
    where = ".".join(str(p) for p in e["loc"][1:])
    if e["type"] == "json_invalid":  # loc is (body, character offset)
        return f"the body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])} at character {where}); send an object such as {EXAMPLE}"
    return f"{where or 'body'}: {e['msg']}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and not (kind == "application/json" or kind.endswith("+json")):
            # FastAPI reads only JSON bodies; `curl -d` sends application/x-www-form-urlencoded.
            return error(422, f"malformed request: the body must be JSON, sent with Content-Type: application/json "
                              f"(this request says {kind or 'nothing'}); e.g. curl -H 'Content-Type: application/json' -d '{EXAMPLE}'")
        return error(422, "malformed request: " + "; ".join(_problem(e) for e in exc.errors()))

    @app.exception_handler(CharRNNError)
    async def bad_value(request: Request, exc: CharRNNError):
        return error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            message = f"no {path} here; the API is POST /v1/generate, GET /v1/model, GET /health, GET / (the page) and GET /openapi.json"
        elif exc.status_code == 405:
            message = f"{method} is not allowed on {path}; use {(exc.headers or {}).get('Allow', 'another method')}"
        elif exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "There was an error parsing the body": bytes that are not UTF-8 (latin-1, say),
            # nesting too deep for the JSON parser, a number with thousands of digits.
            cause = exc.__cause__
            why = "it is not UTF-8" if isinstance(cause, UnicodeDecodeError) else (
                "it is nested too deeply" if isinstance(cause, RecursionError) else str(cause).split(";")[0] or type(cause).__name__)
            return error(422, f"malformed request: the body cannot be read as JSON ({why}); send a UTF-8 JSON object such as {EXAMPLE}")
        else:
            message = str(exc.detail)
        return error(exc.status_code, message, exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        # Starlette still re-raises it afterwards, so the server's log gets the traceback.
        return error(500, f"internal error: {type(exc).__name__}: {exc}; the server's log has the traceback")
