"""Which Host headers a server answers: `charrnn serve --allowed-hosts`, enforced by Starlette's
TrustedHostMiddleware.

A page on any website can make its visitor's browser send requests to 127.0.0.1 under the site's own
name, by pointing that name at 127.0.0.1 (DNS rebinding); the browser then lets the page read the answers.
The Host header still carries the site's name, so a server that answers only its own names is out of
reach. A loopback bind answers localhost, 127.0.0.1 and [::1] (any port); a bind to every interface or to
another address asked for remote access under whatever name reaches the machine, so it answers any name
unless --allowed-hosts lists them. The parsing here is stdlib only: the CLI checks the flag before
anything is loaded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from charrnn.errors import CharRNNError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

# A DNS name or IPv4 address, optionally behind "*." (Starlette's one wildcard form).
NAME = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


def parse_hosts(text: str) -> tuple[str, ...]:
    """--allowed-hosts: comma-separated host names or addresses ("*.example.com" for a domain's names,
    "*" for any), lower-cased, IPv6 addresses in brackets as a Host header writes them."""
    if not text.strip():
        raise CharRNNError("--allowed-hosts needs at least one host name, or '*' for any")
    return tuple(_host(entry.strip().lower()) for entry in text.split(","))


def _host(entry: str) -> str:
    if entry == "*":
        return entry
    if not entry:
        raise CharRNNError("--allowed-hosts has an empty entry; separate host names with single commas")
    address = _address(entry.strip("[]"))
    if address is not None:
        return f"[{address}]" if address.version == 6 else str(address)
    if "*" in entry and not (entry.startswith("*.") and "*" not in entry[1:]):
        raise CharRNNError(f"--allowed-hosts {entry!r}: a wildcard must be a whole first label, as '*.example.com'")
    if ":" in entry or "/" in entry:
        raise CharRNNError(f"--allowed-hosts {entry!r}: give host names without a port or scheme, e.g. box.example")
    if not NAME.fullmatch(entry):
        raise CharRNNError(f"--allowed-hosts {entry!r} is not a host name or an IP address")
    return entry


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])  # an IPv6 zone (fe80::1%eth0) names no other host
    except ValueError:
        return None


def allowed_hosts(address: str, listed: Sequence[str] | None = None) -> list[str]:
    """The Host names a server bound to `address` (the listening socket's) answers: the loopback names,
    the address itself, and `listed` (parse_hosts's; None: the default for the bind, described above)."""
    bound = _address(address)
    if listed is None and not (bound is not None and bound.is_loopback):
        return ["*"]
    if listed is not None and "*" in listed:
        return ["*"]
    hosts = list(LOOPBACK_NAMES)
    if bound is not None and not bound.is_unspecified:
        own = f"[{bound}]" if bound.version == 6 else str(bound)
        if own not in hosts:
            hosts.append(own)
    return hosts + [host for host in listed or () if host not in hosts]


class AllowedHosts:
    """ASGI middleware: Starlette's TrustedHostMiddleware, answering a refused Host header with the API's
    JSON error (OpenAI's envelope on its paths) instead of plain text."""

    def __init__(self, app, hosts: Sequence[str]):
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        self.app, self.hosts = app, list(hosts)
        # The guard calls _admitted for an allowed host, else answers 400 itself through _refusal's send.
        self.guard = TrustedHostMiddleware(self._admitted, allowed_hosts=self.hosts, www_redirect=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # lifespan; the app has no websockets
            return await self.app(scope, receive, send)
        scope["charrnn.send"] = send
        await self.guard(scope, receive, self._refusal(scope, send))

    async def _admitted(self, scope, receive, _guard_send):
        await self.app(scope, receive, scope.pop("charrnn.send"))

    def _refusal(self, scope, send):
        from charrnn.serving.http import error

        async def refuse(message):
            if message["type"] != "http.response.start":
                return  # the guard's plain-text body: the JSON one went with the start
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")[:200]
            asked = f"Host {host!r}" if host else "a request without a Host header"
            response = error(
                400,
                f"this server does not answer {asked}; it answers {', '.join(self.hosts)} "
                "(charrnn serve --allowed-hosts adds names)",
                path=scope["path"],
            )
            await send({"type": "http.response.start", "status": 400, "headers": response.raw_headers})
            await send({"type": "http.response.body", "body": response.body})

        return refuse
