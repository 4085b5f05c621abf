"""OpenAI-compatible completions for `charrnn serve`, so that existing clients (the `openai` package,
LangChain, LiteLLM, curl recipes written for vLLM or llama.cpp's server) work unchanged.

    POST /v1/completions     {model, prompt (a string or a list), max_tokens, temperature, top_p, n, seed,
                              stop, stream, stream_options, top_k (an extension, as vLLM's), drop_unknown}
    GET  /v1/models          {"object": "list", "data": [{"id": MODEL_ID, "object": "model", ...}]}
    GET  /v1/models/{id}     that entry, or 404 model_not_found

A token is a character. The generation is /v1/generate's (serve_http.begin and slices: the shared batch
of batching.py, the checks of model.stream, the server's limits, a client leaving stops it), so the same
seed gives the same text through either endpoint; only the shapes differ. Errors use OpenAI's envelope (serve_http.error). Fields that
OpenAI clients send with their defaults (echo, best_of, logprobs, the penalties, logit_bias, suffix, user)
are accepted as long as they ask for nothing this server does not do; otherwise a 400 says so.
"""

import json
import secrets
import time
from contextlib import aclosing
from typing import Any

from charrnn.config import MAX_SEED, random_seed
from charrnn.errors import CharRNNError

DEFAULT_MAX_TOKENS = 16  # OpenAI's default
MAX_STOPS = 4  # OpenAI's limit on stop sequences

# The shared checks (decoding, the server's limits) name charrnn's arguments; OpenAI clients sent these.
OPENAI_NAMES = {
    "length": "max_tokens",
    "num_samples": "n",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "seed": "seed",
    "prompt": "prompt",
}


class Stops:
    """Ends each sample at its first stop string, which is not returned. A streamed sample holds back the
    end of its text that could begin a stop string, so no part of a stop string is ever sent."""

    def __init__(self, samples: int, stops: list[str]):
        self.stops = stops
        self.texts = [""] * samples
        self.sent = [0] * samples  # characters of each text already given out
        self.reasons: list[str | None] = [None] * samples  # "stop" once a stop string ended the sample

    @property
    def done(self) -> bool:
        return all(self.reasons)

    def feed(self, chunk: list[str]) -> list[str]:
        """Add one slice of generation (a string per sample); returns the new text safe to give out."""
        out = []
        for i, piece in enumerate(chunk):
            if self.reasons[i]:
                out.append("")
                continue
            text = self.texts[i] + piece
            # A stop string starting before `sent` would have been found earlier (what was sent never
            # ends with the start of one).
            found = [at for at in (text.find(s, self.sent[i]) for s in self.stops) if at >= 0]
            if found:
                text, self.reasons[i] = text[: min(found)], "stop"
                safe = len(text)
            else:
                safe = len(text) - max(
                    (k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0
                )
            self.texts[i] = text
            out.append(text[self.sent[i] : max(safe, self.sent[i])])
            self.sent[i] = max(safe, self.sent[i])
        return out

    def finish(self) -> list[str]:
        """The end of generation: what each sample still holds back; the rest finished by length."""
        out = [text[sent:] for text, sent in zip(self.texts, self.sent)]
        self.sent = [len(t) for t in self.texts]
        self.reasons = [reason or "length" for reason in self.reasons]
        return out


def install(app, batcher, limits, model_id: str) -> None:
    """Add the OpenAI-compatible routes to `app` (serve.create_app's), serving the model of `batcher` (a
    batching.Batcher) as `model_id`."""
    from fastapi import Request
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    from charrnn.serving.http import (
        Integer,
        RequestError,
        begin,
        bounds,
        check_limits,
        event_stream,
        openai_error_body,
        slices,
    )

    created = int(time.time())

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        include_usage: bool | None = Field(False, description="a last chunk with usage (and no choices) before [DONE]")

    class CompletionRequest(BaseModel):
        # Strict types, unknown fields refused (OpenAI: "Unrecognized request argument"); the ranges are in
        # the schema and checked by the shared code, whose 400s say what is allowed.
        model_config = ConfigDict(extra="forbid", strict=True)
        model: str | None = Field(
            None, description=f"the served model's id ({model_id!r}, as GET /v1/models lists); omitted = that one"
        )
        prompt: str | list[str] = Field(
            description="text to continue, or a list of texts (each gets n completions); '' starts a fresh line",
            **bounds(
                maxLength=limits.max_prompt_chars,
                minItems=1,
                maxItems=limits.max_samples,
                items={"type": "string", "maxLength": limits.max_prompt_chars},
            ),
        )
        max_tokens: Integer | None = Field(
            min(DEFAULT_MAX_TOKENS, limits.max_length),
            description="characters to generate (a token is a character)",
            **bounds(minimum=0, maximum=limits.max_length),
        )
        temperature: float | None = Field(1.0, description="0 = greedy", **bounds(minimum=0))
        top_p: float | None = Field(1.0, description="1 = off", **bounds(exclusiveMinimum=0, maximum=1))
        n: Integer | None = Field(
            1,
            description="completions per prompt; n times the prompts is at most --max-samples",
            **bounds(minimum=1, maximum=limits.max_samples),
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
        stream: bool | None = Field(
            False, description="Server-Sent Events of text_completion chunks, then data: [DONE]"
        )
        stream_options: StreamOptions | None = None
        top_k: Integer | None = Field(
            0, description="an extension (as vLLM's): sample from the k likeliest; 0 or -1 = off", **bounds(minimum=-1)
        )
        drop_unknown: bool | None = Field(False, description="an extension: drop prompt characters the model never saw")
        # Accepted with the values that ask for nothing (clients send them as defaults); others are a 400.
        echo: bool | None = Field(
            False, description="false only: the prompt is not repeated", **bounds(enum=[False, None])
        )
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

    def documented(*statuses: int) -> dict[int, dict]:
        meaning = {
            400: "a bad or malformed request (OpenAI answers 400 for both); the message says what to send",
            404: "model_not_found: the request names another model than the one served",
            413: "the request body is over --max-body-bytes",
            500: "a bug in the server; its log has the traceback",
        }
        return {status: {"model": OpenAIErrorBody, "description": meaning[status]} for status in statuses}

    chunk_event = {
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

    def card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "charrnn"}

    def options_for(body: CompletionRequest, prompts: list[str]) -> tuple[dict[str, Any], list[str]]:
        """model.stream's arguments, and the stop strings; a RequestError for what this server does not do."""
        if body.model is not None and body.model != model_id:
            raise RequestError(
                f"the model {body.model!r} does not exist; this server serves {model_id!r} (GET /v1/models)",
                param="model",
                status=404,
                code="model_not_found",
            )
        for name, wanted, fix in (
            ("echo", body.echo in (False, None), "leave it out or false"),
            ("best_of", body.best_of in (1, None), "leave it out or 1"),
            ("logprobs", body.logprobs is None, "leave it out or null"),
            ("presence_penalty", body.presence_penalty in (0, None), "leave it out or 0"),
            ("frequency_penalty", body.frequency_penalty in (0, None), "leave it out or 0"),
            ("logit_bias", not body.logit_bias, "leave it out or {}"),
            ("suffix", not body.suffix, "leave it out or empty"),
        ):
            if not wanted:
                raise RequestError(
                    f"{name} is not supported by this server ({name}={getattr(body, name)!r}); {fix}", param=name
                )
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > MAX_STOPS or "" in stops:
            raise RequestError(f"stop must be up to {MAX_STOPS} non-empty strings; got {body.stop!r}", param="stop")
        n = 1 if body.n is None else body.n
        length = min(DEFAULT_MAX_TOKENS, limits.max_length) if body.max_tokens is None else body.max_tokens
        check_limits(
            limits,
            length,
            len(prompts) * n,
            prompts,
            ("max_tokens", "n" if len(prompts) == 1 else f"n times {len(prompts)} prompts", "prompt"),
        )
        options = dict(
            prompt=body.prompt,
            length=length,
            num_samples=n,
            drop_unknown=bool(body.drop_unknown),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=0 if body.top_k in (None, -1) else body.top_k,  # vLLM's -1 = off
            seed=body.seed if body.seed is not None else random_seed(),
        )
        return options, stops

    async def start(options: dict, request: Request):
        try:
            return await begin(batcher, options, request)
        except CharRNNError as exc:  # a shared check: name the OpenAI field the client sent
            message = str(exc)
            word = message.split(" ", 1)[0]
            if word in OPENAI_NAMES:
                raise RequestError(OPENAI_NAMES[word] + message[len(word) :], param=OPENAI_NAMES[word]) from None
            raise RequestError(message, param="prompt" if "prompt" in message else None) from None

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

    @app.get("/v1/models", response_model=ModelList, responses=documented(500))
    async def models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{name:path}", response_model=ModelCard, responses=documented(404, 500))
    async def one_model(name: str):
        if name != model_id:
            raise RequestError(
                f"the model {name!r} does not exist; this server serves {model_id!r}",
                param="model",
                status=404,
                code="model_not_found",
            )
        return card()

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses={
            200: {
                "description": 'the completions; with "stream": true, Server-Sent Events: one text_completion chunk '
                "per slice of generation, then data: [DONE]",
                "content": {"text/event-stream": {"schema": chunk_event}},
            },
            **documented(400, 404, 413, 500),
        },
    )
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        options, stops = options_for(body, prompts)
        _first, generation = await start(options, request)  # the prompts: not repeated (echo is false)
        stops_at = Stops(len(prompts) * options["num_samples"], stops)
        head = {
            "id": f"cmpl-{secrets.token_hex(12)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_id,
        }

        def usage() -> dict:
            completion = sum(len(t) for t in stops_at.texts)
            prompt = sum(len(p) for p in prompts)
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        if not body.stream:
            async with aclosing(slices(generation, request)) as chunks:
                async for chunk in chunks:
                    stops_at.feed(chunk)
                    if stops_at.done:  # every sample met a stop string: generate no further
                        break
            stops_at.finish()
            choices = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                for i, (text, reason) in enumerate(zip(stops_at.texts, stops_at.reasons))
            ]
            return {**head, "choices": choices, "usage": usage()}

        finished: set[int] = set()  # samples whose chunk with a finish_reason was sent

        def event(choices: list[dict], **extra) -> str:
            return f"data: {json.dumps({**head, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

        async def events():
            async with aclosing(slices(generation, request)) as chunks:
                async for chunk in chunks:
                    choices = []
                    for i, text in enumerate(stops_at.feed(chunk)):
                        # A sample's last chunk carries its finish_reason; the others say null, as OpenAI's do.
                        reason = None if i in finished else stops_at.reasons[i]
                        if text or reason:
                            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
                        if reason:
                            finished.add(i)
                    if choices:
                        yield event(choices)
                    if stops_at.done:
                        break
            rest = stops_at.finish()
            last = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": stops_at.reasons[i]}
                for i, text in enumerate(rest)
                if i not in finished
            ]
            if last:
                yield event(last)
            if body.stream_options and body.stream_options.include_usage:
                yield event([], usage=usage())
            yield "data: [DONE]\n\n"

        def failed(exc: Exception) -> str:
            # The openai client raises an APIError for a data event holding "error".
            message = f"internal error: {type(exc).__name__}: {exc}; the server's log has the traceback"
            return f"data: {json.dumps(openai_error_body(500, message))}\n\n"

        return event_stream(request, events(), failed)
