"""A real HTTP/1.1 server on 127.0.0.1 that serves recorded device answers, with switchable faults."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "meters"


def fixture(name: str) -> dict[str, Any]:
    """A recorded device answer from tests/data/meters."""
    doc: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return doc


@dataclass
class Answer:
    """What one path answers: a JSON document or raw bytes, a status, and an optional delay."""

    body: bytes
    status: int = 200
    delay_s: float = 0.0


@dataclass
class FixtureServer:
    """Serves `routes` (path without query → Answer); counts the requests per path."""

    routes: dict[str, Answer] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def json(self, path: str, doc: object, status: int = 200, delay_s: float = 0.0) -> None:
        """Answer `path` with a JSON document."""
        self.routes[path] = Answer(json.dumps(doc).encode(), status, delay_s)

    def raw(self, path: str, body: bytes, status: int = 200) -> None:
        """Answer `path` with raw bytes."""
        self.routes[path] = Answer(body, status)

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (port 0 = any free one)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            target = request.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            path = target.split("?", 1)[0]
            self.hits[path] = self.hits.get(path, 0) + 1
            answer = self.routes.get(path, Answer(b'{"error": "not found"}', 404))
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            head = (
                f"HTTP/1.1 {answer.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(answer.body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + answer.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)
