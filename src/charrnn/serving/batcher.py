"""Continuous batching for the server: one worker thread steps every active request's rows as one batch.

Requests arrive on the event loop (`Batcher.submit`, which runs the shared checks, so a bad request fails
at once), wait in a FIFO queue while the batch is full (`max_batch` rows), and join at the next step: the
worker primes the new request's prompts on their own, exactly as `decoding.stream` does, and appends its
state rows to the batch. Every step then samples each request's rows with that request's own settings
and random stream (`sampling.sample`, drawn in `decoding.stream`'s order), and advances all rows with one
`backend.step`. A request that is finished, or cancelled (its client left), leaves at the next step. So a
request's text is what `model.stream` gives alone with the same seed, whatever else runs beside it.

Threads: all model compute (priming, stepping, sampling) happens on the one worker thread, whose
products use the library's own pool (torch.set_num_threads, ONNX Runtime's intra-op threads); the event
loop only moves text. Text reaches a request through its `Generation`: the worker appends characters
under a lock and wakes the request's loop with `call_soon_threadsafe`, at most one wake-up in flight per
request, so a reader that falls behind gets its characters in larger chunks instead of flooding the loop.

No FastAPI here: the server's faces (routes.py, openai/) use this, and it uses the generation layer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.generation import loop as decoding
from charrnn.generation.sampling import sample_rows

POLL_SECONDS = 0.03  # how often a waiting reader asks whether its client has gone
# A reader hands its client at most one chunk per this interval (the first at once): an event per
# character would cost the event loop more than the model's step, and the loop shares the GIL with the
# worker. 100 updates a second is smoother than the eye needs.
DELIVERY_SECONDS = 0.01

log = logging.getLogger("charrnn.batching")


class Generation:
    """One request: its rows in the batch, sampling settings, random stream, and the text produced for it
    so far, which the worker hands over and the event loop reads."""

    def __init__(
        self,
        batcher: Batcher,
        loop: asyncio.AbstractEventLoop,
        options: dict[str, Any],
        encoded: list[tuple[np.ndarray, bool]] | None = None,
        pieces=None,
    ):
        self.batcher, self.loop, self.options = batcher, loop, options
        self.encoded, self.pieces = encoded, pieces  # prompt ids (batched), or a model's own stream (solo)
        self.rows = len(encoded) * options["num_samples"] if encoded is not None else 0
        self.remaining = options["length"]
        self.rng = np.random.default_rng(options["seed"])
        self.logits: np.ndarray | None = None  # (rows, vocab): the next characters' logits
        self.state: Any = None  # its primed state until it joins the batch
        self.cancelled = False  # set by the loop; the worker drops it at the next step
        self._lock = threading.Lock()
        self._pieces: list[list[str]] = []  # produced, not yet read: a string per row each
        self._finished = False
        self._error: BaseException | None = None
        self._woken = False  # a wake-up is on its way to the loop
        # The reader found nothing and waits: only then does a new piece wake the loop (a wake-up per step
        # would make the loop take the GIL from the worker at every character).
        self._waiting = False
        self._event = asyncio.Event()

    # -- the worker's side --------------------------------------------------------------------------
    def put(self, piece: list[str] | None = None, finished: bool = False, error: BaseException | None = None) -> None:
        with self._lock:
            if self._finished:  # nothing follows the end (a failed step after its last character, say)
                return
            if piece is not None:
                self._pieces.append(piece)
            self._finished = self._finished or finished or error is not None
            self._error = self._error or error
            wake = self._waiting and not self._woken
            self._woken = self._woken or wake
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # its event loop has closed: nobody will read this
                self.cancelled = True

    # -- the event loop's side ----------------------------------------------------------------------
    def _wake(self) -> None:
        with self._lock:
            self._woken = False
        self._event.set()

    def _take(self, first: bool) -> tuple[list[list[str]], bool]:
        with self._lock:
            if self._error is not None and not self._pieces:
                raise self._error
            taken = self._pieces[:1] if first else self._pieces
            self._pieces = self._pieces[1:] if first else []
            self._waiting = not taken and not self._finished
            return taken, self._finished and self._error is None and not self._pieces  # an error is raised next

    async def _wait(self, gone: Callable[[], Awaitable[bool]]) -> bool:
        """Wait for the worker (at most POLL_SECONDS); True if the client has gone (and this is cancelled)."""
        if await gone():
            self.cancel()
            return True
        try:
            async with asyncio.timeout(POLL_SECONDS):
                await self._event.wait()
        except TimeoutError:
            pass
        return False

    async def first(self, gone: Callable[[], Awaitable[bool]]) -> list[str] | None:
        """The prompts as shown (the first piece, once primed); None if the client left while waiting.
        Raises what priming raised (a bad prompt from a model's own stream, a bug)."""
        while True:
            self._event.clear()  # before taking: a piece put after the take wakes the wait below
            taken, _ = self._take(first=True)
            if taken:
                return taken[0]
            if await self._wait(gone):
                return None

    async def chunks(self, gone: Callable[[], Awaitable[bool]]) -> AsyncIterator[list[str]]:
        """The rest, as it is produced: each chunk a string per row. Stops, and leaves the batch, once
        `gone()` says the client has left, or when the reader stops early."""
        try:
            while True:
                self._event.clear()
                taken, finished = self._take(first=False)
                if taken:
                    yield ["".join(column) for column in zip(*taken)]
                if finished:
                    return
                if taken:
                    if await gone():  # asked between chunks too: while text flows, _wait below is not reached
                        return
                    await asyncio.sleep(DELIVERY_SECONDS)  # let characters gather
                if not taken and await self._wait(gone):
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        self.batcher.cancel(self)


class Batcher:
    """Steps every active request of `model` (a charrnn.CharModel or runtime.ExportedModel) as one batch
    of at most `max_batch` rows on one worker thread. A model without `backend` (a stand-in with only
    `stream`) is driven one item of its own stream per step, on the same thread."""

    def __init__(self, model, max_batch: int = 64):
        self.model, self.max_batch = model, max_batch
        # One backend, so one dtype for every batch size: a request's text must not change with the load.
        # The dtype a single request gets from `model.stream` (model.dtype_for(1)).
        self.backend = model.backend(1) if hasattr(model, "backend") else None
        self.precision = getattr(self.backend, "precision", None)
        self._lock = threading.Condition()
        self._queue: deque[Generation] = deque()  # waiting for rows, first come first served
        # The worker's alone: the batched requests in row order, their state, and the stand-ins' streams.
        self._batched: list[Generation] = []
        self._state: Any = None  # (layers, rows, hidden): every batched request's rows
        self._solo: list[Generation] = []
        self._counts = (0, 0)  # (requests, rows) in the batch, for /health
        self._thread: threading.Thread | None = None

    def submit(self, options: dict[str, Any], loop: asyncio.AbstractEventLoop) -> Generation:
        """Queue a request (model.stream's keyword arguments, with a seed); bad values raise CharRNNError
        here, before anything is queued."""
        if self.backend is None:
            generation = Generation(self, loop, options, pieces=self.model.stream(**options))
        else:
            prompts = [options["prompt"]] if isinstance(options["prompt"], str) else list(options["prompt"])
            decoding.check_request(
                prompts,
                options["length"],
                options["num_samples"],
                options["temperature"],
                options["top_k"],
                options["top_p"],
                options["seed"],
            )
            encoded = [decoding.prompt_ids(self.model.vocab, p, options.get("drop_unknown", False)) for p in prompts]
            generation = Generation(self, loop, options, encoded=encoded)
            if generation.rows > self.max_batch:  # it could never join (the server's limits rule this out)
                raise CharRNNError(
                    f"the request has {generation.rows} rows; this server steps at most "
                    f"{self.max_batch} together (--max-batch)"
                )
        with self._lock:
            self._queue.append(generation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="charrnn-batcher", daemon=True)
                self._thread.start()
            self._lock.notify()
        return generation

    def cancel(self, generation: Generation) -> None:
        with self._lock:
            generation.cancelled = True
            if generation in self._queue:
                self._queue.remove(generation)

    def stats(self) -> dict[str, int]:
        with self._lock:
            queued = len(self._queue)
        requests, rows = self._counts
        return {"active_generations": requests, "active_rows": rows, "queued_generations": queued}

    # -- the worker thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            joining = self._admit()
            try:
                self._step(joining)
            except Exception as exc:  # a bug in a step: every batched request gets it, the server goes on
                log.exception("a generation step failed")
                for generation in self._batched + joining:
                    generation.put(error=exc)
                self._batched, self._state = [], None
            self._counts = (len(self._batched) + len(self._solo), sum(g.rows for g in self._batched))

    def _admit(self) -> list[Generation]:
        """Waiting requests that fit beside the active rows (blocks while there is nothing to do)."""
        with self._lock:
            while not self._batched and not self._solo and not self._queue:
                self._lock.wait()
            free = self.max_batch - sum(g.rows for g in self._batched if not g.cancelled)
            joining = []
            # Strictly in order: a large request at the head is not overtaken by smaller ones behind it.
            while self._queue and self._queue[0].rows <= free:
                joining.append(self._queue.popleft())
                free -= joining[-1].rows
            return joining

    def _step(self, joining: list[Generation]) -> None:
        """One step: the cancelled leave, the waiting join, every request samples a character per row,
        and the batched rows advance together."""
        self._leave([g for g in self._batched if g.cancelled])
        for g in self._solo:
            if g.cancelled:
                g.pieces.close()
        self._solo = [g for g in self._solo if not g.cancelled and g.remaining > 0]
        joined = [g for g in joining if not g.cancelled and self._prime(g)]
        self._solo += [g for g in joined if g.pieces is not None]
        batched = [g for g in joined if g.pieces is None]
        if batched:
            earlier = [self._state] if self._state is not None else []
            self._state = self.backend.join(earlier + [g.state for g in batched])
            self._batched += batched
            for g in batched:
                g.state = None
        for g in self._solo:
            self._advance_solo(g)
        if not self._batched:
            return
        chars, ids = self.model.vocab.chars, []
        # Every request's rows sampled in one call, each with its own settings and random stream.
        parts = [
            (g.rows, g.rng, g.options["temperature"], g.options["top_k"], g.options["top_p"]) for g in self._batched
        ]
        all_ids = sample_rows(np.concatenate([g.logits for g in self._batched]), parts)  # (rows,)
        start = 0
        for g in self._batched:
            next_ids, start = all_ids[start : start + g.rows], start + g.rows
            g.remaining -= 1
            g.put([chars[i] for i in next_ids], finished=g.remaining == 0)
            ids.append(next_ids)
        # A request that has its last character leaves now: like decoding.stream, it takes no further step.
        ids = [i for g, i in zip(self._batched, ids) if g.remaining]
        self._leave([g for g in self._batched if not g.remaining])
        if self._batched:
            logits, self._state = self.backend.step(np.concatenate(ids), self._state)  # (rows, vocab)
            start = 0
            for g in self._batched:
                g.logits, start = logits[start : start + g.rows], start + g.rows

    def _leave(self, leaving: list[Generation]) -> None:
        """Drop these requests' rows from the batch."""
        if not leaving:
            return
        gone, offset, rows = set(map(id, leaving)), 0, []
        for g in self._batched:
            if id(g) not in gone:
                rows.extend(range(offset, offset + g.rows))
            offset += g.rows
        self._batched = [g for g in self._batched if id(g) not in gone]
        self._state = self.backend.take(self._state, rows) if rows else None

    def _prime(self, generation: Generation) -> bool:
        """Prime a joining request on its own (as decoding.stream does) and give out its prompts; False if
        it does not join (it failed, or it has nothing to generate)."""
        try:
            if generation.pieces is not None:
                generation.put(next(generation.pieces))
                return True
            ids = [ids for ids, _ in generation.encoded]
            n = generation.options["num_samples"]
            generation.logits, generation.state = self.backend.prime(ids, n)  # (rows, vocab), (layers, rows, hidden)
            vocab = self.model.vocab
            generation.put([vocab.decode(i) if shown else "" for i, shown in generation.encoded for _ in range(n)])
        except Exception as exc:  # a bug (bad values were refused in submit), or a stand-in's own error
            generation.put(error=exc)
            return False
        if generation.remaining == 0:
            generation.put(finished=True)
            return False
        return True

    def _advance_solo(self, generation: Generation) -> None:
        try:
            generation.put(next(generation.pieces))
        except StopIteration:
            generation.remaining = 0
            generation.put(finished=True)
        except Exception as exc:
            generation.remaining = 0
            generation.put(error=exc)
