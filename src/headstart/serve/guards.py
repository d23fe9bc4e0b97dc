"""What the server does about slow or hostile clients, below and around the routes.

uvicorn already bounds keep-alive (``timeout_keep_alive``), concurrent connections and tasks
(``limit_concurrency``: a 503 past it) and the size of an incomplete header
(``h11_max_incomplete_event_size``); :func:`server_config` sets them. Two things it has no
setting for are written here, small:

- a header timeout: a connection whose request headers are not complete ``header_timeout_s``
  after its first byte (or after its previous response) is closed, so 200 connections stopped
  in the middle of their headers do not stay open (``HeaderTimeoutH11``, a subclass of uvicorn's
  h11 protocol);
- a body read timeout: ``BodyGuard`` (ASGI middleware) answers 408 and closes when a request
  body stalls for ``body_timeout_s``, and a client that goes away mid-upload ends its request
  quietly (no traceback in the server log).

``security_headers`` is what every response carries: the page sends a Content-Security-Policy
that allows nothing from other origins, ``nosniff`` and frame options.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import h11
import psutil
import uvicorn
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@dataclass(frozen=True)
class ConnectionLimits:
    """Timeouts and caps for connections, read by :func:`server_config` and :class:`BodyGuard`."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0  # longest pause between two pieces of a body
    keep_alive_s: float = 5.0
    max_connections: int = 256  # concurrent connections and requests; past it, 503
    max_header_bytes: int = 64 * 1024


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are too slow."""

    header_timeout_s: float = ConnectionLimits.header_timeout_s
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()  # between requests: headers of the next one have begun
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11]:
    """The protocol class with its timeout (uvicorn takes a class, not an instance)."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": seconds})


class BodyTimeout(Exception):
    """A request body paused longer than the body timeout."""


class BodyGuard:
    """ASGI middleware: the body read timeout, quiet client disconnects, the security headers."""

    def __init__(self, app: ASGIApp, body_timeout_s: float) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def timed_receive() -> Message:
            try:
                return await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError as e:
                raise BodyTimeout from e

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in names
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, timed_receive, send_with_headers)
        except ClientDisconnect:
            return  # the client went away: nobody to answer, nothing to log
        except BodyTimeout:
            if not started:
                await _send_json(send_with_headers, 408, "request body too slow: closed")


async def _send_json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def server_config(app: ASGIApp, host: str, port: int, limits: ConnectionLimits) -> uvicorn.Config:
    """uvicorn's settings for ``headstart serve``: the limits above, quiet logs."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_timeout_protocol(limits.header_timeout_s),
        timeout_keep_alive=int(max(1, limits.keep_alive_s)),
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::", "")
IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def default_allowed_hosts(host: str) -> list[str]:
    """The ``Host`` values a server listening on ``host`` answers by default: that address,
    localhost, and (listening on every interface) each interface's address and this machine's
    name. A name that only a DNS record points here (rebinding) is not among them."""
    names = {host.lower(), *LOOPBACK_NAMES}
    if host in ANY_ADDRESS:
        for addresses in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0].lower() for a in addresses if a.family in IP_FAMILIES)
        names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
    names.discard("")
    names.update(f"[{n}]" for n in list(names) if ":" in n and not n.startswith("["))
    return sorted(names)
