"""An OCPP charge point's routing of received messages: a call that waits on the cable lock is handled
in its own task, so the reader goes on with the backend's answers meanwhile."""

from __future__ import annotations

import asyncio
import json

import pytest

from evpilot.api.ocpp.station import Station
from evpilot.api.ocpp.v16 import Link16
from evpilot.control.clock import ManualClock
from evpilot.control.runtime import Runtime
from tests.helpers import make_config

pytestmark = pytest.mark.asyncio


async def test_unlock_connector_is_routed_in_its_own_task_other_messages_in_line() -> None:
    config = make_config({"ocpp": {"url": "ws://127.0.0.1:9/ocpp/", "id": "EVPILOT-01"}})
    rt = Runtime(config, ManualClock())
    assert rt.config.ocpp is not None
    link = Link16(Station(rt, rt.config.ocpp, "EVPILOT-01", {1: "cp1"}))
    gate = asyncio.Event()
    routed: list[str] = []

    async def route(raw: str) -> None:
        routed.append(raw)
        await gate.wait()

    unlock = json.dumps([2, "1", "UnlockConnector", {"connectorId": 1}])
    await link.route(unlock, route)  # returns while its handling still waits
    await asyncio.sleep(0)
    assert routed == [unlock] and not gate.is_set()

    answer = json.dumps([3, "2", {"status": "Accepted"}])
    other = json.dumps([2, "3", "Heartbeat", {}])
    gate.set()  # handled in line: the call returns only once routed
    await link.route(answer, route)
    await link.route(other, route)
    assert routed == [unlock, answer, other]
    await link.stop()
