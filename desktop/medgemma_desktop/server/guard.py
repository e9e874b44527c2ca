"""What every request passes before a route runs: the Host allow-list, CORS for listed origins only,
the API key and the body limit. Pure ASGI, so streamed answers and disconnects pass through untouched.

The mistakes this avoids are other local servers' (see the issue that asked for it): a page on
any site driving the server through DNS rebinding (Ollama's CVE-2024-28224: fixed here by the Host
check), `*` as the trusted host when bound to 0.0.0.0 (Jan), `Access-Control-Allow-Origin: *` with
credentials (llama-cpp-python) or any Origin echoed back (llama-server).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .config import ServerConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})
ALLOWED_HEADERS = "authorization, content-type, x-api-key"


def error_body(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error shape, which its client turns into the matching exception type."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def host_name(host_header: str) -> str:
    """'[::1]:8765' → '::1', 'localhost:8765' → 'localhost'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BodyTooLarge(Exception):
    """A request body grew past the limit while being read."""


class Guard:
    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.hosts = config.allowed_hosts()
        self.origins = frozenset(config.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if host_name(headers.get("host", "")) not in self.hosts:
            await send_json(send, 403, error_body(403, "this server answers only to its own address (Host header "
                                                  "refused)", "permission_error", "host_not_allowed"))
            return
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None:
            if origin not in self.origins:
                # A browser page from another site: no CORS headers, and no work done for it either.
                await send_json(send, 403, error_body(403, "requests from this web origin are not allowed "
                                                      "(see --cors-origin)", "permission_error", "origin_not_allowed"))
                return
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS":
                await send({"type": "http.response.start", "status": 204, "headers": [
                    *cors, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                    (b"access-control-max-age", b"600")]})
                await send({"type": "http.response.body", "body": b""})
                return
        if self.config.api_key and scope["path"] not in OPEN_PATHS and not self._key_ok(headers):
            await send_json(send, 401, error_body(401, "a valid API key is required (Authorization: Bearer KEY or "
                                                  "x-api-key)", "authentication_error", "invalid_api_key"), cors)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body_bytes):
            await send_json(send, 413, error_body(413, f"the request body is over {self.config.max_body_bytes} bytes",
                                                  "invalid_request_error", "request_too_large"), cors)
            return

        limit, seen = self.config.max_body_bytes, 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        async def send_with_cors(message: Message) -> None:
            if cors and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_cors)
        except BodyTooLarge:
            await send_json(send, 413, error_body(413, f"the request body is over {limit} bytes",
                                                  "invalid_request_error", "request_too_large"), cors)

    def _key_ok(self, headers: dict[str, str]) -> bool:
        expected = (self.config.api_key or "").encode()
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        # Constant time: how long the check takes says nothing about how much of the key was right.
        return hmac.compare_digest(given.encode(), expected)
