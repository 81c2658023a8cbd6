"""A charger as a ThingsBoard device over MQTT (seed 004): telemetry, and RPC on `v1/devices/me/rpc`.

Each charger with a `thingsboard` mapping gets its own MQTT connection whose user name is the
device's access token, as ThingsBoard's device API expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
from typing import Any

import aiomqtt

from evpilot.api.esp32evse import vocab
from evpilot.config import ThingsBoardModel, parse_mqtt_url
from evpilot.control.runtime import Runtime
from evpilot.core import commands as cmd
from evpilot.core.errors import CommandError
from evpilot.inputs import JsonError, read_json

log = logging.getLogger("evpilot.thingsboard")
TELEMETRY = "v1/devices/me/telemetry"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
# Reconnect after a lost connection: this first, doubled per failure up to the cap (seconds).
RECONNECT_MIN_S = 1.0
# The origin of RPC commands (the runtime's log and GET /api/commands).
ORIGIN = "thingsboard"
RECONNECT_MAX_S = 60.0
METHODS = ("getEnabled", "setEnabled", "getChargingCurrent", "setChargingCurrent")


class RpcRefused(Exception):
    """An RPC request that changes nothing; the message goes back in the error response."""


def telemetry(rt: Runtime, cid: str) -> dict[str, Any]:
    """The seed's telemetry document: exactly its fields, in the ESP32-EVSE's units (Ws, W, A, V, °C, s)."""
    d = rt.charger_doc(cid)
    state = str(d["state"])
    session = d.get("session") or {}
    amps, volts = d["amperage"], d["voltage"]
    return {
        "session": state[:1] in ("B", "C", "D"),
        "charging": state in vocab.CHARGING_STATES,
        "enabled": d["enabled"],
        "available": d["available"],
        "error": bool(d["errors"]),
        "consumption": round(session.get("energy_kwh", 0.0) * vocab.WS_PER_KWH),
        "power": round(d["power_w"]),
        "temperature": round(d["temperature"], 1),
        "uptime": round(rt.clock.now() - rt.started_at),
        "currentL1": amps[0],
        "currentL2": amps[1],
        "currentL3": amps[2],
        "voltageL1": volts[0],
        "voltageL2": volts[1],
        "voltageL3": volts[2],
    }


def _bool_param(params: Any) -> bool:
    if isinstance(params, bool):
        return params
    if isinstance(params, dict) and isinstance(params.get("value"), bool):
        return bool(params["value"])
    raise RpcRefused(f"params must be true or false, got {json.dumps(params)[:60]}")


def _amps_param(params: Any) -> float:
    value = params.get("value") if isinstance(params, dict) else params
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RpcRefused(f"params must be a current in A, got {json.dumps(params)[:60]}")
    return vocab.tenths(float(value))


def answer_rpc(rt: Runtime, cid: str, request: Any) -> dict[str, Any]:
    """The response to one RPC request: `{"value": ...}`, or `{"error": ...}` with nothing changed."""
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        return {"error": "the request must be an object with a method"}
    method, params = request["method"], request.get("params")
    ch = rt.charger(cid)
    try:
        if method == "getEnabled":
            return {"value": ch.enabled}
        if method == "getChargingCurrent":
            return {"value": vocab.charging_current(ch.user_limit, ch.config.max_current)}
        if method == "setEnabled":
            on = _bool_param(params)
            rt.apply(cmd.SetEnabled(cid, on), ORIGIN)
            return {"value": on}
        if method == "setChargingCurrent":
            amps = _amps_param(params)
            rt.apply(cmd.SetUserLimit(cid, amps), ORIGIN)
            return {"value": vocab.charging_current(ch.user_limit, ch.config.max_current)}
    except RpcRefused as exc:
        return {"error": f"{method}: {exc}"}
    except CommandError as exc:
        return {"error": f"{method}: {exc.field} {exc.message}"}
    return {"error": f"unknown method {method[:40]!r} (known: {', '.join(METHODS)})"}


class ThingsBoardDevice:
    """One charger's connection to ThingsBoard: telemetry every interval_s, RPC answered at once."""

    def __init__(self, rt: Runtime, cid: str, cfg: ThingsBoardModel) -> None:
        self.rt = rt
        self.cid = cid
        self.cfg = cfg
        self.tls, self.host, self.port, _user, _password = parse_mqtt_url(cfg.url)
        self.connected = asyncio.Event()
        self.published = 0
        self.answered = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect in the background (and keep reconnecting)."""
        self._task = asyncio.create_task(self._run(), name=f"thingsboard:{self.cid}")

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _client(self) -> aiomqtt.Client:
        context = ssl.create_default_context() if self.tls else None
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.cfg.token,
            identifier=f"evpilot-{self.cid}",
            keepalive=60,
            timeout=10,
            tls_context=context,
        )

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        episode = False
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(RPC_REQUEST + "+", qos=1)
                    self.connected.set()
                    if episode:
                        log.info("ThingsBoard %s:%d (%s): connected again", self.host, self.port, self.cid)
                    episode = False
                    delay = RECONNECT_MIN_S
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                if not episode:
                    log.warning("ThingsBoard %s:%d (%s): %s; retrying", self.host, self.port, self.cid, exc)
                episode = True
            finally:
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _session(self, client: aiomqtt.Client) -> None:
        async def publish() -> None:
            while True:
                doc = telemetry(self.rt, self.cid)
                await client.publish(TELEMETRY, json.dumps(doc, separators=(",", ":")), qos=1)
                self.published += 1
                await asyncio.sleep(self.cfg.interval_s)

        async def receive() -> None:
            async for message in client.messages:
                reply = self.handle(str(message.topic), message.payload)
                if reply is not None:
                    await client.publish(reply[0], json.dumps(reply[1], separators=(",", ":")), qos=1)
                    self.answered += 1

        # Whichever ends first (a lost connection) ends the session; its error is raised.
        tasks = [asyncio.create_task(publish()), asyncio.create_task(receive())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc
        raise aiomqtt.MqttError("the connection ended")

    def handle(self, topic: str, payload: object) -> tuple[str, dict[str, Any]] | None:
        """The (topic, document) answering one RPC request message; None for another topic."""
        if not topic.startswith(RPC_REQUEST):
            return None
        request_id = topic[len(RPC_REQUEST) :]
        if not request_id or "/" in request_id or len(request_id) > 64:
            return None
        data = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
        try:
            request = read_json(bytes(data))
        except JsonError as exc:
            return RPC_RESPONSE + request_id, {"error": f"the request is not JSON: {exc}"}
        return RPC_RESPONSE + request_id, answer_rpc(self.rt, self.cid, request)


def devices(rt: Runtime) -> list[ThingsBoardDevice]:
    """A ThingsBoard device for every charger with a `thingsboard` mapping."""
    return [ThingsBoardDevice(rt, ch.id, ch.thingsboard) for ch in rt.config.chargers if ch.thingsboard]
