"""Where the server listens and who may use it: checked before anything binds."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from medgemma_models.errors import MedGemmaError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_QUEUE = 8
# A chat request is text: 4 MiB holds a whole context window of it many times over.
MAX_BODY_BYTES = 4 * 1024 * 1024
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class ServerConfigError(MedGemmaError):
    """A server setting that cannot be used (a non-loopback address without a key, an unreadable key file)."""


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_api_key() -> str:
    """A key to paste into a client: 32 random bytes, URL-safe."""
    return "mge-" + secrets.token_urlsafe(32)


def read_key_file(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerConfigError(f"cannot read the API key file {path}: {exc}") from exc
    if not key:
        raise ServerConfigError(f"the API key file {path} is empty")
    return key


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    queue: int = DEFAULT_QUEUE  # requests that may wait for the engine; past that, 429
    save_history: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    extra_hosts: tuple[str, ...] = field(default=())  # Host names accepted besides loopback and `host`

    def check(self) -> None:
        """Refuse what would make the server unsafe or unusable, in one sentence."""
        if not 0 <= self.port <= 65535:
            raise ServerConfigError(f"port {self.port} is not a TCP port (0-65535)")
        if self.queue < 0:
            raise ServerConfigError("--queue must be 0 or more")
        if not is_loopback(self.host) and not self.api_key:
            raise ServerConfigError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach this machine could use "
                "the model; pass --api-key or --api-key-file, or keep the default 127.0.0.1")
        for origin in self.cors_origins:
            if origin == "*" or "://" not in origin:
                raise ServerConfigError(f"--cors-origin takes one origin such as http://localhost:3000, not {origin!r}")

    def allowed_hosts(self) -> frozenset[str]:
        """Host header values (without port) that may reach the routes: the guard against DNS rebinding."""
        hosts = {*LOOPBACK_NAMES, *(h.lower() for h in self.extra_hosts)}
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.add(self.host.lower().strip("[]"))
        return frozenset(hosts)

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port if port is not None else self.port}"
