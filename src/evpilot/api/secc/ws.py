"""The SECC WebSocket (`/api/ws`): state frames out, text commands in; also the native API's socket loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from evpilot.api.auth import may_command, socket_subprotocol, ws_forbidden_frame
from evpilot.api.secc.vocab import LimitsBody, set_limits
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core.errors import CommandError
from evpilot.inputs import NumberError, parse_float

# The origin of the commands a socket sends (`/api/ws`; the per-charger SECC socket says `ws:secc`).
ORIGIN = "ws"
# Seconds a WebSocket close may wait for a client that does not read.
CLOSE_WAIT_S = 10.0


def ws_command(rt: Runtime, cid: str, text: str, origin: str = ORIGIN) -> str | None:
    """Run one text command (`setEnabled\\ntrue|false`, `setCurrentLimit\\n<A>`); returns an error or None."""
    name, sep, arg = text.strip().partition("\n")
    arg = arg.strip(" \t\r\n")
    if not sep:
        return "expected '<command>\\n<argument>'"
    try:
        if name == "setEnabled":
            if arg.lower() not in ("true", "false"):
                return "setEnabled takes true or false"
            set_limits(rt, cid, LimitsBody(enabled=arg.lower() == "true"), origin)
        elif name == "setCurrentLimit":
            try:
                amps = parse_float(arg)
            except NumberError:
                return "setCurrentLimit takes a number of amperes"
            try:
                set_limits(rt, cid, LimitsBody.model_construct(amperageLimit=amps), origin)
            except CommandError as exc:
                return f"setCurrentLimit: {exc.message}"
        else:
            return f"unknown command {name[:40]!r}"
    except (CommandError, UnknownCharger) as exc:
        return str(exc)
    return None


Frame = dict[str, Any]


async def run_socket(
    socket: WebSocket,
    rt: Runtime,
    cid: str,
    translate: Callable[[Frame], Frame | None] | None = None,
    origin: str = ORIGIN,
) -> None:
    """Push state frames (through `translate`) and take text commands until the client goes away.

    Frames wait in the client's bounded queue (error replies too); a client that falls so far behind
    that a frame does not fit is dropped: closed with 1013 (try again later), so it reconnects and
    starts again from a full state instead of silently missing frames.
    """
    # A browser that offered its token as a subprotocol fails the connection unless it is echoed.
    await socket.accept(subprotocol=socket_subprotocol(socket.scope))
    commander = may_command(socket.scope)
    q = rt.subscribe()

    async def read() -> None:
        while True:
            msg = await socket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            if text is not None and not commander:
                q.offer({"raw": ws_forbidden_frame(text)})
                continue
            error = "binary frames are not accepted" if text is None else ws_command(rt, cid, text, origin)
            if error is not None:
                frame = {"topic": "error", "message": {"command": (text or "")[:64], "detail": error}}
                q.offer({"raw": frame})

    async def write() -> None:
        while True:
            frame = await q.get()
            out = frame["raw"] if "raw" in frame else (translate(frame) if translate else frame)
            if out is not None:
                await socket.send_text(json.dumps(out, separators=(",", ":")))

    tasks = {
        asyncio.create_task(read(), name="ws-read"),
        asyncio.create_task(write(), name="ws-write"),
        asyncio.create_task(q.overflowed.wait(), name="ws-overflow"),
    }
    overflowed = False
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        overflowed = q.overflowed.is_set()
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError | OSError):
                rt.supervisor.record("websocket", exc)
    except asyncio.CancelledError:
        pass
    finally:
        rt.unsubscribe(q)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        # The close waits for the client to take what is already sent; one that never reads is left
        # to the server's transport (bounded buffers) after CLOSE_WAIT_S.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_WAIT_S):
                if overflowed:
                    await socket.close(code=1013, reason="client too slow: frames dropped")
                else:
                    await socket.close()
