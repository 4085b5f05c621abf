"""GET /v1/model's answer: the served model's description, made once and told in names, not paths."""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import asdict
from pathlib import PureWindowsPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from charrnn.serving.limits import ServeLimits

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class ModelCard:
    """The description of `model` with the server's limits and precision. It is made the first time it is
    asked for, on a worker thread: describing a run reads its files (metrics.jsonl may be tens of MB), which
    would stall every other request on the event loop. It is kept: the weights served never change, even
    while the run trains on."""

    def __init__(self, model, limits: ServeLimits, precision: str | None):
        self.model, self.limits, self.precision = model, limits, precision
        self._lock = threading.Lock()
        self._card: dict[str, Any] | None = None

    async def get(self) -> dict[str, Any]:
        if self._card is None:
            await asyncio.to_thread(self._make)
        return self._card

    def _make(self) -> None:
        with self._lock:  # two first requests at once describe the model once
            if self._card is None:
                self._card = {
                    **public(self.model.describe()),
                    "limits": asdict(self.limits),
                    "precision": self.precision,
                    "vocabulary": "".join(self.model.vocab.chars),
                }


def public(value: Any) -> Any:
    """`value` (a description) with each local path cut to its last part and each URL to scheme, host and
    path: clients learn what a corpus is called, not where this machine keeps it, nor a URL's credentials."""
    if isinstance(value, dict):
        return {key: public(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [public(item) for item in value]
    if not isinstance(value, str):
        return value
    if URL.match(value):
        parts = urlsplit(value)
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    if "/" in value or "\\" in value:
        return PureWindowsPath(value).name  # splits at either separator
    return value
