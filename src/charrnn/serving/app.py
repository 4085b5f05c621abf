"""HTTP API and web page: `charrnn serve RUN_OR_EXPORT` (FastAPI on uvicorn).

    POST /v1/generate   {prompt, length, temperature, top_k, top_p, seed, num_samples, stream, drop_unknown}
                        -> {"samples": [...], "seed": S}, or with "stream": true Server-Sent Events:
                           data: {"texts": [...]} per chunk (the prompts first), then event: done
                           (or event: error, {"error": ...}, should generation fail midway)
    GET  /v1/model      architecture, vocabulary size, parameters, training metrics, limits
    POST /v1/completions, GET /v1/models   OpenAI-compatible (the openai package): the same generation
    GET  /health        {"status": "ok", "active_streams", "active_generations", "active_rows",
                         "queued_generations", "max_batch", "precision"}
    GET  /              a single page that streams generations (no build step, nothing from the internet)
    GET  /openapi.json  the schema

Generation is batched continuously (batcher.py, docs/serving.md): one worker thread steps the rows of
every active request together, one character per step, with at most --max-batch rows; a new request
joins at the next step (primed on its own), a finished one or one whose client left leaves at the next
step, and requests beyond --max-batch wait in a FIFO queue. Each request keeps its own state, sampling
settings and random stream, and the batch steps in one dtype whatever its size, so a request's text is
what the CLI and the Python API give for the same seed. All compute runs on that worker (with
--threads threads, default the cores); the event loop only moves text. Both this API (routes.py) and the
OpenAI-compatible one read generations through http.begin and slices. Every error is JSON,
{"error": "..."} (see http.py): 400 for bad values (unseen prompt characters included), 404 / 405 for a
wrong path or method, 413 for a body over the limit, 422 for a malformed request, 500 for a bug; the
OpenAI-compatible paths use OpenAI's error envelope instead. `charrnn serve` answers only the Host names
it is served as (hosts.py: a loopback bind, only loopback names), and tells clients names, never this
machine's paths (card.py).

The CLI imports this module to parse its flags (ServeLimits), so FastAPI is imported only in create_app
and serve.
"""

from collections.abc import Sequence
from pathlib import Path

from charrnn.config import MAX_SEED
from charrnn.errors import CharRNNError
from charrnn.serving.hosts import AllowedHosts, parse_hosts
from charrnn.serving.hosts import allowed_hosts as allowed_hosts_for
from charrnn.serving.limits import ServeLimits

__all__ = ["MAX_SEED", "ServeLimits", "bind", "create_app", "serve"]

DEFAULT_LIMITS = ServeLimits()  # frozen, so one instance is every call's default


def create_app(
    model,
    limits: ServeLimits = DEFAULT_LIMITS,
    title: str = "charrnn",
    model_id: str = "charrnn",
    allowed_hosts: Sequence[str] | None = None,
):
    """The ASGI app serving `model` (a charrnn.CharModel or a charrnn.runtime.ExportedModel); `model_id`
    is its name in the OpenAI-compatible API. `allowed_hosts`: the Host names it answers (hosts.py; serve
    passes those of its bind); None answers any, for an app put behind the caller's own server."""
    from fastapi import FastAPI

    from charrnn.serving import routes
    from charrnn.serving.batcher import Batcher
    from charrnn.serving.http import BodyLimit, documented, install_error_handlers
    from charrnn.serving.openai import routes as openai_routes

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
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(AllowedHosts, hosts=allowed_hosts)  # added last: it runs first
    install_error_handlers(app)
    routes.patch_openapi(app)
    app.include_router(routes.router(model, batcher, limits))
    openai_routes.install(app, batcher, limits, model_id)
    app.include_router(routes.page_router())
    return app


def serve(
    path,
    load,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = DEFAULT_LIMITS,
    model_name: str | None = None,
    threads: int | None = None,
    precision: str = "auto",
    allowed_hosts: str | None = None,
) -> None:
    """Serve the run or export at `path`, which `load(threads, precision)` loads (the CLI passes
    generation's one loader, so this package never imports PyTorch itself). `model_name` is its id in the
    OpenAI-compatible API (default: the folder's name: clients are not told this machine's paths);
    `threads`: the compute threads (default the cores); `allowed_hosts`: --allowed-hosts as given
    (hosts.py; None: the default for the bind)."""
    import ipaddress
    import sys

    try:
        import uvicorn
    except ImportError:
        raise CharRNNError("serving needs fastapi and uvicorn: pip install 'charrnn[serve]'") from None
    limits.check()
    listed = None if allowed_hosts is None else parse_hosts(allowed_hosts)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise CharRNNError(f"--threads must be at least 1; got {threads}")
    listener = bind(host, port)  # before loading the model: a busy port fails at once
    model = load(threads, precision)
    address, port = listener.getsockname()[:2]  # the port is the one the system picked for --port 0
    hosts = allowed_hosts_for(address, listed)
    if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        names = ", under any host name (--allowed-hosts lists the names to answer)" if hosts == ["*"] else ""
        print(f"charrnn: serving on {host}: anyone who can reach this machine can use it{names}", file=sys.stderr)
    model_id = model_name or Path(path).resolve().name or "charrnn"
    print(
        f"serving {path} on http://{f'[{host}]' if ':' in host else host}:{port}/  (API: POST /v1/generate, GET /v1/model; OpenAI-compatible: "
        f"POST /v1/completions with model {model_id!r}; Ctrl-C stops)",
        file=sys.stderr,
    )
    app = create_app(model, limits, model_id=model_id, allowed_hosts=hosts)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
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
