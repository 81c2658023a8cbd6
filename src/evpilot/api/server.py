"""evpilot's HTTP server settings: request-head size, count and time limits, a connection cap, and one
log line (not one per accept) when the process runs out of file descriptors.

uvicorn's C parser (httptools) accepts any header size and waits forever for a request head; the
protocol below counts the bytes of the request line and headers as they arrive, refuses a head over
`MAX_HEAD_BYTES` or with more than `MAX_HEADERS` headers with 431, and closes a connection whose head
is not complete `HEAD_TIMEOUT_S` after its first byte (408). Connections beyond the cap are closed as
soon as they are accepted, so an accepted socket never waits for a file descriptor it cannot get.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from pathlib import Path
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from evpilot.security import server_tls_context

# Request line plus headers; browsers send under 8 KiB, cookies included.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
# From the first byte of a request to the end of its headers.
HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 500
# File descriptors kept free for the store, the MQTT link, device drivers and the listening socket.
FD_RESERVE = 32
# A repeated out-of-descriptors condition is summarised at most this often.
FD_SUMMARY_S = 60.0

log = logging.getLogger("evpilot.http")


def connection_cap() -> int:
    """The most connections served at once: MAX_CONNECTIONS, or fewer when file descriptors are scarce."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head size/count/time limits and a connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_done = False
        # Bytes received while the head is incomplete (bounds what the parser buffers) and the exact
        # size of the head's parts (catches a large head that arrives in one read).
        self._head_bytes = 0
        self._head_size = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None
        self._cap = connection_cap()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Serve the connection, or close it at once when the cap is reached."""
        if len(self.connections) >= self._cap:
            self.transport = transport
            transport.abort()
            return
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and its head timer."""
        self._stop_head_timer()
        if self.flow is None:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting head bytes; refuse a head over the limits."""
        if self._refusal is not None or self.parser is None:
            return
        self._unset_keepalive_if_required()
        if not self._head_done:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is None:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
        # Still no end of the head: every byte so far belongs to it.
        if self._refusal is None and not self._head_done and self._head_bytes > MAX_HEAD_BYTES:
            self._refusal = (431, f"request head over {MAX_HEAD_BYTES} bytes")
        if self._refusal is not None:
            self._refuse(*self._refusal)

    def on_url(self, url: bytes) -> None:
        """Count the target's bytes into the head."""
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count the header; too many or too large refuse the request."""
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > MAX_HEADERS:
            self._refusal = (431, f"more than {MAX_HEADERS} headers")
        elif self._head_size > MAX_HEAD_BYTES:
            self._refusal = (431, f"request head over {MAX_HEAD_BYTES} bytes")
        if self._refusal is not None:
            raise httptools.HttpParserError(self._refusal[1])  # stops the parser; data_received answers
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is complete: stop its timer, then serve the request."""
        self._head_done = True
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The next request's head is counted (and timed) from its first byte."""
        super().on_message_complete()
        self._head_done = False
        self._head_bytes = self._head_size = self._header_count = 0

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._head_done and self._refusal is None and not self.transport.is_closing():
            self._refusal = (408, f"request head not complete within {HEAD_TIMEOUT_S:g} s")
            self._refuse(*self._refusal)

    def _refuse(self, status: int, reason: str) -> None:
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        body = reason.encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


class _OutOfDescriptors(logging.Filter):
    """asyncio logs every failed accept (thousands a second when descriptors run out): log the first,
    then at most one summary per FD_SUMMARY_S."""

    def __init__(self) -> None:
        super().__init__()
        self.suppressed = 0
        self.last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop repeated accept failures; rewrite the ones let through as one line."""
        message = record.getMessage()
        if not message.startswith("socket.accept() out of system resource") and not (
            "_start_serving" in message and record.exc_info is not None
        ):
            return True
        now = time.monotonic()
        if self.last is not None and now - self.last < FD_SUMMARY_S:
            self.suppressed += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        first = self.last is None
        record.msg = "HTTP: out of file descriptors (%s): new connections wait%s"
        tail = " (repeats are counted, not logged)" if first else f"; {self.suppressed} more since last"
        record.args = (exc or "accept failed", tail)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.last, self.suppressed = now, 0
        return True


_FD_FILTER = _OutOfDescriptors()


def quiet_fd_exhaustion() -> None:
    """Install the out-of-descriptors log filter on asyncio's logger (once per process)."""
    logger = logging.getLogger("asyncio")
    if _FD_FILTER not in logger.filters:
        logger.addFilter(_FD_FILTER)


class CannotListen(OSError):
    """The HTTP address cannot be listened on; the message says why, naming HOST:PORT."""


def host_port(host: str, port: int) -> str:
    """HOST:PORT as a URL writes it (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), made before anything starts: a taken port changes nothing."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(f"{host_port(host, port)} is already in use") from None
        raise CannotListen(f"cannot listen on {host_port(host, port)}: {exc.strerror or exc}") from None
    return sock


def server_config(app: Any, host: str, port: int, **extra: Any) -> uvicorn.Config:
    """The uvicorn configuration evpilot serves with (the CLI and the tests alike)."""
    quiet_fd_exhaustion()
    options: dict[str, Any] = {
        "log_level": "warning",
        "timeout_graceful_shutdown": 5,
        "http": LimitedHttpProtocol,
        # A backstop for the h11 parser, should it ever be chosen: it has its own head size limit.
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        # uvicorn answers 503 beyond this many connections or running requests.
        "limit_concurrency": connection_cap() + 1,
        **extra,
    }
    return uvicorn.Config(app, host=host, port=port, **options)


def tls_options(cert: Path, key: Path) -> dict[str, Any]:
    """uvicorn's options to serve HTTPS and WSS with this certificate and key, checked first (BadTls)."""
    server_tls_context(cert, key, "http.tls")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
