"""A WebSocket client that sends but never reads stays bounded on the server and gets dropped."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import pytest

from evpilot.control.runtime import QUEUE_FRAMES, Runtime
from tests.helpers import make_config, serve


def masked_text(text: str) -> bytes:
    """One masked client text frame."""
    data = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    if len(data) < 126:
        head += bytes([0x80 | len(data)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(data))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def open_ws(base: str, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw WebSocket connection with a tiny receive buffer (so the server's sends back up soon)."""
    port = int(base.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    # Stop reading: the client's own buffers must not absorb what the server sends.
    writer.transport.pause_reading()
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame: (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    size = b1 & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(size)


def queued(rt: Runtime) -> int:
    """The most frames any WebSocket client of `rt` has waiting."""
    return max((q.qsize() for q in rt.subscribers), default=0)


@pytest.mark.parametrize("path", ["/chargers/cp1/api/ws", "/api/ws"])
async def test_a_client_flooding_invalid_commands_without_reading_is_bounded_and_dropped(path: str) -> None:
    async with serve(make_config(), speed=10) as (base, rt):
        assert not rt.subscribers
        reader, writer = await open_ws(base, path)
        while not rt.subscribers:
            await asyncio.sleep(0.01)
        (client_queue,) = rt.subscribers
        limit = client_queue.maxsize
        assert QUEUE_FRAMES <= limit < QUEUE_FRAMES + 10
        frame = masked_text("bogusCommand\n" + "x" * 40)
        sent = 0
        peak = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                writer.write(frame * 100)
                await writer.drain()
                sent += 100

        flooding = asyncio.create_task(flood())
        try:
            # Every invalid command earns an error frame; the server drops the client once its queue is
            # full instead of growing it.
            for _ in range(6000):
                peak = max(peak, client_queue.qsize())
                if client_queue not in rt.subscribers:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"client still subscribed after {sent} commands, {queued(rt)} queued")
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
        assert sent > limit
        assert peak <= limit
        assert client_queue.overflowed.is_set()
        # The client, reading at last, finds what was sent before the drop and then a 1013 close.
        writer.transport.resume_reading()
        codes = []
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(reader), 30)
            if opcode == 0x8:
                codes.append(struct.unpack("!H", payload[:2])[0])
                break
        assert codes == [1013]
        writer.close()
