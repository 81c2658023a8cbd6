"""`/api/ws` carries every charger event as an `event` frame, beside the `session` frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tests.helpers import make_config, serve

Frame = dict[str, Any]


class Reader:
    """Reads a socket's frames, keeping every one seen, until a frame that matches."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []

    async def until(self, ok: Callable[[Frame], bool], limit: int = 2000) -> Frame:
        """The first frame from now on that satisfies `ok`; fails after `limit` frames or 10 s silence."""
        for _ in range(limit):
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            self.frames.append(frame)
            if ok(frame):
                return frame
        raise AssertionError(f"no matching frame in {limit} frames")

    def events(self, since: int = 0) -> list[Frame]:
        """The `event` messages seen since frame index `since`."""
        return [f["message"] for f in self.frames[since:] if f["topic"] == "event"]


def event(kind: str, **fields: Any) -> Callable[[Frame], bool]:
    """Matches an event frame of type `kind` for cp1 whose fields include `fields`."""

    def ok(frame: Frame) -> bool:
        if frame["topic"] != "event":
            return False
        m = frame["message"]
        return bool(
            m["type"] == kind and m["charger"] == "cp1" and all(m.get(k) == v for k, v in fields.items())
        )

    return ok


async def test_event_frames_for_plug_charge_fault_and_unplug() -> None:
    async with serve(make_config(), speed=20) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        url = base.replace("http://", "ws://") + "/api/ws"
        async with websockets.connect(url) as ws:
            r = Reader(ws)
            if rt.charger("cp1").plugged:  # the simulated home starts with a car in
                await c.post("/api/sim/chargers/cp1/unplug")
                await r.until(event("unplugged"))
                # The tick's last event: nothing of the unplug is left to come.
                await r.until(event("state", work_state="charger_free", pilot="A"))

            start = len(r.frames)
            assert (await c.post("/api/sim/chargers/cp1/plug", json={"soc": 20})).status_code == 200
            await r.until(event("state", work_state="charger_charging"))
            events = r.events(start)
            types = [e["type"] for e in events]
            assert types[:2] == ["plugged", "session_started"]
            assert types.count("plugged") == 1 and types.count("session_started") == 1
            sid = events[1]["session_id"]
            assert sid == rt.charger("cp1").session.id  # type: ignore[union-attr]
            assert {"type": "contactor", "charger": "cp1", "closed": True} in [
                {k: e[k] for k in ("type", "charger", "closed")} for e in events if e["type"] == "contactor"
            ]
            # The session frame clients already use is still sent, beside the event.
            sessions = [f["message"] for f in r.frames[start:] if f["topic"] == "session"]
            assert sessions == [{"charger": "cp1", "event": "started", "id": sid}]

            start = len(r.frames)
            await c.post("/api/sim/chargers/cp1/fault", json={"rcm": True})
            await r.until(event("fault_raised", flag="rcm_triggered"))
            await r.until(event("contactor", closed=False))
            await c.post("/api/sim/chargers/cp1/fault", json={"rcm": False})
            assert (await c.post("/api/chargers/cp1/reset")).status_code == 200
            await r.until(event("fault_cleared", flag="rcm_triggered"))
            raised = [e for e in r.events(start) if e["type"] == "fault_raised"]
            assert [e["flag"] for e in raised] == ["rcm_triggered"]

            start = len(r.frames)
            await c.post("/api/sim/chargers/cp1/unplug")
            await r.until(event("unplugged"))
            ended = [e for e in r.events(start) if e["type"] == "session_ended"]
            assert len(ended) == 1 and ended[0]["record"]["id"] == sid
            assert ended[0]["record"]["stop_reason"] == "ev_disconnected"
            sessions = [f["message"] for f in r.frames[start:] if f["topic"] == "session"]
            assert len(sessions) == 1 and sessions[0]["event"] == "ended" and sessions[0]["id"] == sid

            every = r.events()
            assert all(set(e) >= {"type", "charger", "at"} for e in every)
            times = [e["at"] for e in every]
            assert times == sorted(times)
