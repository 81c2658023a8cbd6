"""A simulated Shelly Pro 3EM / EM (gen2 HTTP RPC) serving the simulator's mains meter."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from evpilot.sim.site import MainsMeterReading

Source = Callable[[], MainsMeterReading | None]


class SimShellyEm:
    """A real HTTP server on 127.0.0.1 that answers like a Shelly Pro 3EM (`EM.GetStatus`) or EM (`EM1`)."""

    def __init__(
        self, source: Source, kind: Literal["3em", "em1"] = "3em", mac: str = "02AABBCC0E01"
    ) -> None:
        self.source = source
        self.kind = kind
        self.mac = mac
        self.requests = 0
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(
            routes=[
                Route("/shelly", self._shelly),
                Route("/rpc/{method}", self._rpc, methods=["GET", "POST"]),
            ]
        )

    @property
    def device_id(self) -> str:
        """The meter's Shelly device id."""
        return ("shellypro3em-" if self.kind == "3em" else "shellyemg3-") + self.mac.lower()

    def info(self) -> dict[str, Any]:
        """`/shelly` and `Shelly.GetDeviceInfo`."""
        return {
            "name": None,
            "id": self.device_id,
            "mac": self.mac,
            "slot": 0,
            "model": "SPEM-003CEBEU" if self.kind == "3em" else "S3EM-002CXCEU",
            "gen": 2 if self.kind == "3em" else 3,
            "fw_id": "20241011-114455/1.4.4-g6d2a586",
            "ver": "1.4.4",
            "app": "Pro3EM" if self.kind == "3em" else "EMG3",
            "auth_en": False,
            "auth_domain": None,
        }

    def em_status(self, channel: int) -> dict[str, Any] | None:
        """`EM.GetStatus` of the three-phase meter (None if there is no such channel)."""
        m = self.source()
        if channel != 0 or m is None:
            return None
        doc: dict[str, Any] = {"id": 0}
        for i, p in enumerate("abc"):
            v, a, w = m.voltages[i], m.currents[i], m.powers[i]
            doc.update(
                {
                    f"{p}_current": round(abs(a), 3),
                    f"{p}_voltage": round(v, 1),
                    f"{p}_act_power": round(w, 1),
                    f"{p}_aprt_power": round(abs(v * a), 1),
                    f"{p}_pf": 1.0 if a else 0.0,
                    f"{p}_freq": round(m.frequency, 2),
                }
            )
        doc.update(
            n_current=None,
            total_current=round(sum(abs(a) for a in m.currents), 3),
            total_act_power=round(sum(m.powers), 1),
            total_aprt_power=round(sum(abs(v * a) for v, a in zip(m.voltages, m.currents, strict=True)), 1),
            user_calibrated_phase=[],
        )
        return doc

    def em1_status(self, channel: int) -> dict[str, Any] | None:
        """`EM1.GetStatus` of one channel of the single-phase meter (channel 0 = phase L1)."""
        m = self.source()
        if channel not in (0, 1) or m is None:
            return None
        if channel == 1:
            return {
                "id": 1,
                "current": 0.0,
                "voltage": round(m.voltages[0], 1),
                "act_power": 0.0,
                "aprt_power": 0.0,
                "pf": 0.0,
                "freq": round(m.frequency, 2),
                "calibration": "factory",
            }
        a, v, w = m.currents[0], m.voltages[0], m.powers[0]
        return {
            "id": 0,
            "current": round(abs(a), 3),
            "voltage": round(v, 1),
            "act_power": round(w, 1),
            "aprt_power": round(abs(v * a), 1),
            "pf": 1.0 if a else 0.0,
            "freq": round(m.frequency, 2),
            "calibration": "factory",
        }

    async def _shelly(self, request: Request) -> Response:
        return JSONResponse(self.info())

    async def _rpc(self, request: Request) -> Response:
        self.requests += 1
        method = request.path_params["method"]
        raw = request.query_params.get("id", "0")
        try:
            channel = json.loads(raw)
        except ValueError:
            channel = None
        if not isinstance(channel, int) or isinstance(channel, bool):
            return JSONResponse({"code": -103, "message": "Invalid argument 'id'"}, status_code=500)
        if method == "Shelly.GetDeviceInfo":
            return JSONResponse(self.info())
        handler = {"3em": {"EM.GetStatus": self.em_status}, "em1": {"EM1.GetStatus": self.em1_status}}[
            self.kind
        ].get(method)
        if handler is None:
            return JSONResponse({"code": 404, "message": f"No handler for {method}"}, status_code=404)
        doc = handler(channel)
        if doc is None:
            return JSONResponse(
                {"code": -105, "message": f"Argument 'id', value {channel} not found!"}, status_code=500
            )
        return JSONResponse(doc)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start serving; returns the port (a free one when `port` is 0)."""
        # A poller's open request must not hold up stop() for ever.
        config = uvicorn.Config(
            self.app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="sim-shelly-em")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the simulated Shelly EM stopped while starting")
            await asyncio.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None
