"""POST /v1/completions: a CompletionRequest checked against this server, generated in the shared batch,
and answered as a Completion or a stream of text_completion chunks.

A token is a character. The generation is /v1/generate's (http.begin and slices: the shared batch, the
checks of model.stream, the server's limits, a client leaving stops it), so the same seed gives the same
text through either endpoint; only the shapes differ."""

import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request

from charrnn.config import random_seed
from charrnn.errors import CharRNNError
from charrnn.serving.batcher import Batcher
from charrnn.serving.http import RequestError, begin, check_limits, event_stream, openai_error_body, slices
from charrnn.serving.limits import ServeLimits
from charrnn.serving.openai.protocol import DEFAULT_MAX_TOKENS, MAX_STOPS, CompletionRequest
from charrnn.serving.openai.serving_models import OpenAIServingModels
from charrnn.serving.openai.stops import Stops

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


class OpenAIServingCompletion:
    """Completions from `batcher`'s model, within `limits`, for requests naming `models`' model."""

    def __init__(self, batcher: Batcher, limits: ServeLimits, models: OpenAIServingModels):
        self.batcher, self.limits, self.models = batcher, limits, models

    async def create(self, body: CompletionRequest, request: Request):
        """The answer to a request: the Completion, or its Server-Sent Events."""
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        options, stops = self.options_for(body, prompts)
        _first, generation = await self.start(options, request)  # the prompts: not repeated (echo is false)
        stops_at = Stops(len(prompts) * options["num_samples"], stops)
        head = {
            "id": f"cmpl-{secrets.token_hex(12)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.models.model_id,
        }
        if not body.stream:
            await collect(generation, request, stops_at)
            choices = [
                choice(i, text, reason) for i, (text, reason) in enumerate(zip(stops_at.texts, stops_at.reasons))
            ]
            return {**head, "choices": choices, "usage": usage(prompts, stops_at)}
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(
            request, events(generation, request, stops_at, head, prompts if with_usage else None), failed
        )

    def options_for(self, body: CompletionRequest, prompts: list[str]) -> tuple[dict[str, Any], list[str]]:
        """model.stream's arguments, and the stop strings; a RequestError for what this server does not do."""
        self.models.check_requested(body.model)
        refuse_unsupported(body)
        stops = stop_strings(body.stop)
        n = 1 if body.n is None else body.n
        length = min(DEFAULT_MAX_TOKENS, self.limits.max_length) if body.max_tokens is None else body.max_tokens
        check_limits(
            self.limits,
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

    async def start(self, options: dict, request: Request):
        """http.begin, with a failed shared check's message naming the OpenAI field the client sent."""
        try:
            return await begin(self.batcher, options, request)
        except CharRNNError as exc:
            message = str(exc)
            word = message.split(" ", 1)[0]
            if word in OPENAI_NAMES:
                raise RequestError(OPENAI_NAMES[word] + message[len(word) :], param=OPENAI_NAMES[word]) from None
            raise RequestError(message, param="prompt" if "prompt" in message else None) from None


def refuse_unsupported(body: CompletionRequest) -> None:
    """A RequestError for a field that OpenAI clients send with a value asking for what this server does not do."""
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


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """The request's stop strings as a list; a RequestError for too many or an empty one."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or "" in stops:
        raise RequestError(f"stop must be up to {MAX_STOPS} non-empty strings; got {stop!r}", param="stop")
    return stops


def choice(index: int, text: str, reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}


def usage(prompts: list[str], stops: Stops) -> dict:
    completion = sum(len(t) for t in stops.texts)
    prompt = sum(len(p) for p in prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def collect(generation, request: Request, stops: Stops) -> None:
    """Read a generation into `stops` to its end, or until every sample met a stop string."""
    async with aclosing(slices(generation, request)) as chunks:
        async for chunk in chunks:
            stops.feed(chunk)
            if stops.done:  # every sample met a stop string: generate no further
                break
    stops.finish()


def chunk_event(head: dict, choices: list[dict], **extra) -> str:
    return f"data: {json.dumps({**head, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"


async def events(
    generation, request: Request, stops: Stops, head: dict, usage_of: list[str] | None
) -> AsyncIterator[str]:
    """A completion's chunks as it is generated, then a chunk with the usage of the prompts `usage_of`
    (when given), then [DONE]."""
    finished: set[int] = set()  # samples whose chunk with a finish_reason was sent
    async with aclosing(slices(generation, request)) as chunks:
        async for chunk in chunks:
            choices = []
            for i, text in enumerate(stops.feed(chunk)):
                # A sample's last chunk carries its finish_reason; the others say null, as OpenAI's do.
                reason = None if i in finished else stops.reasons[i]
                if text or reason:
                    choices.append(choice(i, text, reason))
                if reason:
                    finished.add(i)
            if choices:
                yield chunk_event(head, choices)
            if stops.done:
                break
    rest = stops.finish()
    last = [choice(i, text, stops.reasons[i]) for i, text in enumerate(rest) if i not in finished]
    if last:
        yield chunk_event(head, last)
    if usage_of is not None:
        yield chunk_event(head, [], usage=usage(usage_of, stops))
    yield "data: [DONE]\n\n"


def failed(exc: Exception) -> str:
    # The openai client raises an APIError for a data event holding "error".
    message = f"internal error: {type(exc).__name__}: {exc}; the server's log has the traceback"
    return f"data: {json.dumps(openai_error_body(500, message))}\n\n"
