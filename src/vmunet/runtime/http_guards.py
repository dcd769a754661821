"""The HTTP guards of ``vmunet serve``, as ASGI middleware that answers from the request's headers alone (before
a byte of the body is read, before FastAPI parses anything):

- ``HostCheck``: the Host header must name this server (DNS rebinding), 421;
- ``TokenCheck``: the bearer token, or the cookie ``/?token=`` sets, 401;
- ``RequestSlots``: at most N uploads at once (503 + Retry-After after a wait), the body's size (413) and the time
  it takes to arrive (408).
"""

import hashlib
import hmac
import json
import re
import threading
import time

__all__ = ["LOOPBACK_HOST_NAMES", "OPEN_PATHS", "HostCheck", "RequestSlots", "Slots", "TokenCheck",
           "allowed_host_names", "check_token", "token_cookie_name"]

RETRY_AFTER_S = 5
LOOPBACK_HOST_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
WILDCARD = {"0.0.0.0", "::", ""}
OPEN_PATHS = {"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # no token needed
OPEN_PREFIXES = ("/static-offline-docs/",)  # fastapi-offline's JavaScript and CSS of /docs


def check_token(token: str | None) -> None:
    """A token must be printable ASCII without spaces (it travels in a header and a cookie); an empty one, from
    an unset shell variable, would otherwise look like authentication."""
    if token is None:
        return
    if token == "":
        raise ValueError("--token is empty (an unset shell variable?); give a token, or leave --token out for a "
                         "random one, or --no-token to serve without authentication")
    if not (token.isascii() and token.isprintable() and " " not in token):
        raise ValueError("--token must be printable ASCII without spaces (it is sent in an HTTP header)")


def token_cookie_name(token: str) -> str:
    """Per token, so that two servers on one host (cookies ignore the port) do not overwrite each other's."""
    return "vmunet_token_" + hashlib.sha256(token.encode()).hexdigest()[:12]


async def _send_json(send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class HostCheck:
    """ASGI middleware: the Host header's name (port aside) must be one of ``allowed`` (None: any): a web page
    whose name an attacker rebinds to 127.0.0.1 sends its own name, and gets 421 (DNS rebinding)."""

    def __init__(self, app, allowed: set[str] | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allowed is None:
            return await self.app(scope, receive, send)
        host = _header(scope, b"host").strip().lower()
        name = host.rsplit(":", 1)[0] if re.fullmatch(r".*:\d+", host) and not host.endswith("]") else host
        if name not in self.allowed:
            shown = host if host.isascii() and host.isprintable() and len(host) < 100 else "(unprintable)"
            return await _send_json(send, 421, {"detail": f"host {shown!r} is not served here (vmunet serve "
                                                          "--allowed-host NAME to allow it)"})
        return await self.app(scope, receive, send)


class TokenCheck:
    """ASGI middleware: everything but the page, /health and the API docs needs the token, as
    ``Authorization: Bearer TOKEN`` or the cookie that ``GET /?token=TOKEN`` sets (then redirected to ``/``, so
    that the token leaves the address bar). Checked from the headers alone: an unauthenticated upload is
    answered 401 before its body is read."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()
        self.cookie = token_cookie_name(token)

    def _valid(self, value: str) -> bool:
        return value.isascii() and hmac.compare_digest(value.encode(), self.token)

    def _authorised(self, scope) -> bool:
        scheme, _, value = _header(scope, b"authorization").partition(" ")
        if scheme.lower() == "bearer" and self._valid(value.strip()):
            return True
        for part in _header(scope, b"cookie").split(";"):
            key, _, value = part.strip().partition("=")
            if key == self.cookie and self._valid(value):
                return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == "/" and scope.get("method") == "GET":
            from urllib.parse import parse_qs

            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            if given and self._valid(given):  # the URL printed at start: keep the token as a cookie
                cookie = f"{self.cookie}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()),
                                        (b"content-length", b"0")]})
                return await send({"type": "http.response.body", "body": b""})
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or self._authorised(scope):
            return await self.app(scope, receive, send)
        return await _send_json(send, 401, {"detail": "a token is required: open the URL vmunet serve printed "
                                                      "(/?token=...), or send Authorization: Bearer TOKEN"},
                                [(b"www-authenticate", b"Bearer")])


class Slots:
    """A counter of busy slots, shared by the event loop(s) that serve requests (thread-safe, never blocks)."""

    def __init__(self, size: int):
        self.size, self.used, self._lock = size, 0, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.size:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


class RequestSlots:
    """ASGI middleware for POST requests (uploads): at most ``slots.size`` at once, from the first byte of the
    body to the answer (so the disk and memory that uploads, decoding and predicting hold are bounded); the
    next ones wait up to ``queue_wait_s`` without reading their bodies, then get 503 with Retry-After. A body
    larger than ``max_bytes`` gets 413 (from Content-Length before anything is read, or as the bytes arrive);
    one that takes longer than ``read_timeout_s`` to arrive gets 408."""

    def __init__(self, app, slots: Slots, max_bytes: int, read_timeout_s: float, queue_wait_s: float):
        self.app, self.slots, self.max_bytes = app, slots, max_bytes
        self.read_timeout_s, self.queue_wait_s = read_timeout_s, queue_wait_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        import anyio

        message = (f"upload larger than the limit of {self.max_bytes / 2 ** 20:.4g} MiB "
                   "(vmunet serve --max-upload-mb)")
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, {"detail": message})
        deadline = time.monotonic() + self.queue_wait_s
        while not self.slots.take():
            if time.monotonic() >= deadline:
                return await _send_json(send, 503, {"detail": f"busy: {self.slots.size} uploads are being "
                                                              f"predicted; retry in {RETRY_AFTER_S} s"},
                                        [(b"retry-after", str(RETRY_AFTER_S).encode())])
            await anyio.sleep(0.02)
        try:
            return await self.app(scope, self._limited(receive), send)
        finally:
            self.slots.give()

    def _limited(self, receive):
        from fastapi import HTTPException

        received = 0
        read_by = time.monotonic() + self.read_timeout_s

        async def limited_receive():
            nonlocal received
            import anyio

            try:
                with anyio.fail_after(max(read_by - time.monotonic(), 0.001)):
                    event = await receive()
            except TimeoutError:
                raise HTTPException(408, f"upload not received within {self.read_timeout_s:g} s "
                                         "(vmunet serve --read-timeout)") from None
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"upload larger than the limit of {self.max_bytes / 2 ** 20:.4g} MiB "
                                             "(vmunet serve --max-upload-mb)")  # answered by FastAPI, inside
            return event

        return limited_receive


def allowed_host_names(host: str, allowed_hosts: list[str] | None) -> set[str] | None:
    """The Host names a server bound to ``host`` answers to: the loopback names, ``host`` itself and
    ``allowed_hosts``; None (any) when bound to every address without ``allowed_hosts``, or given ``*``."""
    extra = [name.strip().lower() for name in allowed_hosts or []]
    if "*" in extra or (host in WILDCARD and not extra):
        return None
    names = set(LOOPBACK_HOST_NAMES) | set(extra)
    if host not in WILDCARD:
        names |= {host.lower(), f"[{host.lower()}]" if ":" in host else host.lower()}
    return names
