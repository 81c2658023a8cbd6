"""Charger drivers over the devices' own HTTP APIs: ESP32-EVSE REST, Shelly Top AC RPC, SmartEVSE REST."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any

import httpx

from evpilot.devices.base import LinkReading
from evpilot.devices.meter import Clock
from evpilot.devices.netlink import DeviceState, LinkError, LinkFault, NetLink, number
from evpilot.inputs import JsonError, read_json

log = logging.getLogger("evpilot.links")
WS_PER_KWH = 3_600_000.0
JSON = {"content-type": "application/json"}


def _client(host: str, port: int, timeout_s: float, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    host_part = f"[{host}]" if ":" in host else host
    return httpx.AsyncClient(
        base_url=f"http://{host_part}:{port}", timeout=httpx.Timeout(timeout_s), trust_env=False, auth=auth
    )


async def _request(client: httpx.AsyncClient, method: str, path: str, answer: bool = True, **kw: Any) -> Any:
    """One HTTP exchange; its JSON answer when `answer` (else the body is not read); LinkError on failure."""
    try:
        resp = await client.request(method, path, **kw)
    except httpx.TimeoutException:
        raise LinkError(LinkFault.TIMEOUT, f"{method} {path}: no answer in time") from None
    except httpx.HTTPError as exc:
        raise LinkError(LinkFault.UNREACHABLE, f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
    if resp.status_code in (401, 403):
        raise LinkError(LinkFault.AUTH, f"{method} {path}: HTTP {resp.status_code} (check the credentials)")
    if resp.status_code >= 400:
        text = resp.text[:120].strip()
        raise LinkError(LinkFault.REFUSED, f"{method} {path}: HTTP {resp.status_code} {text}")
    if not answer or not resp.content.strip():
        return None
    try:
        return read_json(resp.content)
    except JsonError as exc:
        raise LinkError(LinkFault.PROTOCOL, f"{method} {path}: invalid JSON: {exc}") from None


def _triple(doc: dict[str, Any], key: str, where: str, default: float | None) -> tuple[float, float, float]:
    value = doc.get(key)
    if value is None and default is not None:
        return (default, default, default)
    if not isinstance(value, list) or not 1 <= len(value) <= 3:
        raise LinkError(LinkFault.PROTOCOL, f"{where}: {key!r} is not a list of 1 to 3 numbers")
    out = [number({key: v}, key, where) for v in value]
    out += [0.0] * (3 - len(out))
    return (out[0], out[1], out[2])


# ---- ESP32-EVSE ---------------------------------------------------------------------------------

ESP32_STATE = "/api/v1/state"
ESP32_LETTERS = frozenset("ABCDEF")


def parse_esp32_state(doc: Any, taken_at: float) -> DeviceState:
    """`GET /api/v1/state` as a reading; energy from the lifetime counter (Ws)."""
    where = ESP32_STATE
    if not isinstance(doc, dict):
        raise LinkError(LinkFault.PROTOCOL, f"{where} did not return an object")
    state = doc.get("state")
    if not isinstance(state, str) or not state or state[0] not in ESP32_LETTERS:
        raise LinkError(LinkFault.PROTOCOL, f"{where}: unknown state {state!r}")
    enabled = doc.get("enabled")
    if not isinstance(enabled, bool):
        raise LinkError(LinkFault.PROTOCOL, f"{where}: 'enabled' is not true/false")
    current = number(doc, "chargingCurrent", where)
    total = number(doc, "totalConsumption", where) if doc.get("totalConsumption") is not None else None
    reading = LinkReading(
        taken_at,
        state[0],
        _triple(doc, "current", where, None),
        None if total is None else total / WS_PER_KWH,
        _triple(doc, "voltage", where, 230.0),
    )
    return DeviceState(reading, current if enabled else 0.0)


class Esp32EvseLink(NetLink):
    """An ESP32-EVSE: reads `/api/v1/state`, writes `state/enabled` and `state/charging-current` (0.1 A)."""

    driver_type = "esp32evse"

    def __init__(
        self,
        name: str,
        host: str,
        clock: Clock,
        port: int = 80,
        username: str | None = None,
        password: str | None = None,
        poll_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(name, clock, poll_s, timeout_s)
        self.host = host
        self.port = port
        auth = httpx.BasicAuth(username, password or "") if username is not None else None
        self._client = _client(host, port, timeout_s, auth)
        self.session_kwh: float | None = None
        self._enabled: bool | None = None

    @property
    def address(self) -> str:
        """`host:port`."""
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def fetch(self) -> DeviceState:
        """One `GET /api/v1/state`."""
        doc = await _request(self._client, "GET", ESP32_STATE)
        state = parse_esp32_state(doc, self.clock())
        assert isinstance(doc, dict)
        self._enabled = doc["enabled"]
        consumption = doc.get("consumption")
        if isinstance(consumption, int | float) and not isinstance(consumption, bool):
            self.session_kwh = consumption / WS_PER_KWH
        return state

    async def _post(self, what: str, body: bytes) -> None:
        await _request(self._client, "POST", f"{ESP32_STATE}/{what}", False, content=body, headers=JSON)

    async def deliver(self, amps: float) -> None:
        """Disable for 0; otherwise set the current (0.1 A steps) and enable."""
        if amps <= 0:
            await self._post("enabled", b"false")
            self._enabled = False
            return
        body = json.dumps(round(amps, 1)).encode()
        await self._post("charging-current", body)
        if self._enabled is not True:
            await self._post("enabled", b"true")
            self._enabled = True


# ---- Shelly Top AC ------------------------------------------------------------------------------

# The Top AC's virtual components (seed 000), by role; their keys as evpilot's facade numbers them
# until `Shelly.GetComponents` names the device's own.
OWNER = "service:0"
ROLES = {
    "work_state": "enum:200",
    "current_limit": "number:200",
    "phase_info": "object:200",
    "start_charging": "boolean:200",
}
WORK_LETTER = {
    "charger_free": "A",
    "charger_insert": "B",
    "charger_wait": "B",
    "charger_pause": "B",
    "charger_end": "B",
    "charger_charging": "C",
    "charger_fault": "F",
}


def component_keys(result: Any) -> dict[str, str]:
    """role -> component key from a `Shelly.GetComponents` page (components of owner service:0)."""
    keys = dict(ROLES)
    comps = result.get("components") if isinstance(result, dict) else None
    for comp in comps if isinstance(comps, list) else []:
        if not isinstance(comp, dict) or not isinstance(comp.get("key"), str):
            continue
        config = comp.get("config")
        if isinstance(config, dict) and config.get("owner") == OWNER and config.get("role") in ROLES:
            keys[config["role"]] = comp["key"]
    return keys


def _value(status: dict[str, Any], key: str) -> Any:
    comp = status.get(key)
    if not isinstance(comp, dict) or "value" not in comp:
        raise LinkError(LinkFault.PROTOCOL, f"Shelly.GetStatus: no {key} (is this a Top AC?)")
    return comp["value"]


def parse_shelly_status(status: Any, taken_at: float, keys: dict[str, str] | None = None) -> DeviceState:
    """`Shelly.GetStatus` of a Top AC as a reading (`keys`: role -> component key)."""
    keys = keys or ROLES
    if not isinstance(status, dict):
        raise LinkError(LinkFault.PROTOCOL, "Shelly.GetStatus did not return an object")
    work = _value(status, keys["work_state"])
    letter = WORK_LETTER.get(work) if isinstance(work, str) else None
    if letter is None:
        raise LinkError(LinkFault.PROTOCOL, f"Shelly.GetStatus: unknown work_state {work!r}")
    info = _value(status, keys["phase_info"])
    where = "phase_info"
    if not isinstance(info, dict):
        raise LinkError(LinkFault.PROTOCOL, f"{where} is not an object")
    currents, volts = [], []
    for name in ("phase_a", "phase_b", "phase_c"):
        phase = info.get(name)
        currents.append(number(phase, "current", f"{where}.{name}"))
        v = number(phase, "voltage", f"{where}.{name}")
        volts.append(v if v > 0 else 230.0)
    energy = info.get("total_act_energy")
    kwh = float(energy) if isinstance(energy, int | float) and not isinstance(energy, bool) else None
    limit = _value(status, keys["current_limit"])
    start = _value(status, keys["start_charging"])
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise LinkError(LinkFault.PROTOCOL, f"Shelly.GetStatus: current_limit is {limit!r}")
    reading = LinkReading(
        taken_at,
        letter,
        (currents[0], currents[1], currents[2]),
        kwh,
        (volts[0], volts[1], volts[2]),
    )
    return DeviceState(reading, float(limit) if start is True else 0.0)


class ShellyTopAcLink(NetLink):
    """A Shelly Top AC through Gen2 RPC over HTTP: `Shelly.GetStatus`, `Number.Set`, `Boolean.Set`.

    With `websocket`, the `/rpc` WebSocket is kept open and every `NotifyStatus` it pushes refreshes
    the reading between polls; when it cannot open the link polls over HTTP alone.
    """

    driver_type = "shelly"

    def __init__(
        self,
        name: str,
        host: str,
        clock: Clock,
        port: int = 80,
        password: str | None = None,
        poll_s: float = 1.0,
        timeout_s: float = 2.0,
        websocket: bool = True,
    ) -> None:
        super().__init__(name, clock, poll_s, timeout_s)
        self.host = host
        self.port = port
        auth = httpx.DigestAuth("admin", password) if password is not None else None
        self._client = _client(host, port, timeout_s, auth)
        self._ids = 0
        self._status: dict[str, Any] = {}
        self.use_websocket = websocket and password is None
        self.notifications = 0
        self.keys: dict[str, str] | None = None

    @property
    def address(self) -> str:
        """`host:port`."""
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One RPC frame over `POST /rpc`; an RPC error is a refusal."""
        self._ids += 1
        frame: dict[str, Any] = {"id": self._ids, "src": "evpilot", "method": method}
        if params is not None:
            frame["params"] = params
        doc = await _request(self._client, "POST", "/rpc", content=json.dumps(frame).encode(), headers=JSON)
        if not isinstance(doc, dict):
            raise LinkError(LinkFault.PROTOCOL, f"{method}: the answer is not an RPC frame")
        if "error" in doc:
            err = doc["error"]
            code = err.get("code") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else err
            fault = LinkFault.AUTH if code == 401 else LinkFault.REFUSED
            raise LinkError(fault, f"{method}: error {code}: {message}")
        return doc.get("result")

    async def fetch(self) -> DeviceState:
        """One `Shelly.GetStatus` (after `Shelly.GetComponents` once, to find the components by role)."""
        if self.keys is None:
            page = await self.call("Shelly.GetComponents", {"dynamic_only": True, "include": ["config"]})
            self.keys = component_keys(page)
        status = await self.call("Shelly.GetStatus")
        if isinstance(status, dict):
            self._status = status
        return parse_shelly_status(status, self.clock(), self.keys)

    async def deliver(self, amps: float) -> None:
        """Stop for 0; otherwise set the current limit and start."""
        if amps <= 0:
            await self.call("Boolean.Set", {"owner": OWNER, "role": "start_charging", "value": False})
            return
        await self.call("Number.Set", {"owner": OWNER, "role": "current_limit", "value": round(amps, 1)})
        await self.call("Boolean.Set", {"owner": OWNER, "role": "start_charging", "value": True})

    def notify(self, params: Any) -> None:
        """Merge a `NotifyStatus` into the last status and take it as a fresh reading."""
        if not isinstance(params, dict) or not self._status:
            return
        merged = dict(self._status)
        for key, change in params.items():
            if isinstance(change, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **change}
        try:
            state = parse_shelly_status(merged, self.clock(), self.keys)
        except LinkError:
            return
        self._status = merged
        self._state = state
        self.notifications += 1
        self._answered()

    async def _listen(self) -> None:
        import websockets

        host_part = f"[{self.host}]" if ":" in self.host else self.host
        url = f"ws://{host_part}:{self.port}/rpc"
        while True:
            try:
                async with websockets.connect(url, open_timeout=self.timeout_s) as ws:
                    # A first frame registers this client for notifications (Shelly's convention).
                    await ws.send(
                        json.dumps({"id": 0, "src": "evpilot-ws", "method": "Shelly.GetDeviceInfo"})
                    )
                    async for raw in ws:
                        with contextlib.suppress(JsonError, TypeError):
                            doc = read_json(raw if isinstance(raw, str) else bytes(raw))
                            if isinstance(doc, dict) and doc.get("method") == "NotifyStatus":
                                self.notify(doc.get("params"))
            except Exception as exc:  # any failure means: poll only, retry later
                log.debug("charger %s: Shelly WebSocket closed: %s", self.name, exc)
            await asyncio.sleep(self.backoff_cap_s)

    async def run(self) -> None:
        """Poll (and listen on the WebSocket when asked) until cancelled."""
        listener = asyncio.create_task(self._listen()) if self.use_websocket else None
        try:
            await super().run()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener


# ---- SmartEVSE ----------------------------------------------------------------------------------

SMARTEVSE_SETTINGS = "/settings"
# `evse.state_id` of the firmware (see the SmartEVSE facade's vocabulary) to the IEC 61851 letter.
SMARTEVSE_LETTER = {0: "A", 1: "B", 2: "C", 3: "D", 9: "B", 10: "C"}
# `mode` values of `POST /settings`: 0 off, 1 normal.
SMARTEVSE_OFF, SMARTEVSE_NORMAL = 0, 1


def parse_smartevse_settings(doc: Any, taken_at: float) -> DeviceState:
    """`GET /settings` as a reading: EV meter currents (dA), lifetime energy, override current."""
    if not isinstance(doc, dict):
        raise LinkError(LinkFault.PROTOCOL, f"{SMARTEVSE_SETTINGS} did not return an object")
    evse = doc.get("evse")
    settings = doc.get("settings")
    if not isinstance(evse, dict) or not isinstance(settings, dict):
        raise LinkError(LinkFault.PROTOCOL, f"{SMARTEVSE_SETTINGS}: no 'evse' or 'settings' object")
    state_id = number(evse, "state_id", "evse")
    letter = SMARTEVSE_LETTER.get(int(state_id), "A")
    if number(evse, "error_id", "evse") > 0 and letter == "A":
        letter = "F"
    meter = doc.get("ev_meter")
    currents = (0.0, 0.0, 0.0)
    kwh: float | None = None
    if isinstance(meter, dict) and isinstance(meter.get("currents"), dict):
        c = meter["currents"]
        currents = (
            number(c, "L1", "ev_meter.currents") / 10,
            number(c, "L2", "ev_meter.currents") / 10,
            number(c, "L3", "ev_meter.currents") / 10,
        )
        total = meter.get("total_kwh")
        if isinstance(total, int | float) and not isinstance(total, bool):
            kwh = float(total)
    temp = evse.get("temp")
    temperature = float(temp) if isinstance(temp, int | float) and not isinstance(temp, bool) else None
    override = number(settings, "override_current", "settings") / 10
    mode = doc.get("mode_id")
    off = mode == 0 or (isinstance(doc.get("mode"), str) and doc["mode"].upper() == "OFF")
    reading = LinkReading(taken_at, letter, currents, kwh, temperature=temperature)
    return DeviceState(reading, 0.0 if off else override)


class SmartEvseLink(NetLink):
    """A SmartEVSE through `GET /settings` and `POST /settings?mode=...&override_current=...` (dA)."""

    driver_type = "smartevse"

    def __init__(
        self, name: str, host: str, clock: Clock, port: int = 80, poll_s: float = 1.0, timeout_s: float = 2.0
    ) -> None:
        super().__init__(name, clock, poll_s, timeout_s)
        self.host = host
        self.port = port
        self._client = _client(host, port, timeout_s)
        self._off: bool | None = None

    @property
    def address(self) -> str:
        """`host:port`."""
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def fetch(self) -> DeviceState:
        """One `GET /settings`."""
        doc = await _request(self._client, "GET", SMARTEVSE_SETTINGS)
        state = parse_smartevse_settings(doc, self.clock())
        self._off = state.offered == 0
        return state

    async def deliver(self, amps: float) -> None:
        """Mode OFF for 0; otherwise mode NORMAL with the override current in dA."""
        if amps <= 0:
            params = {"mode": str(SMARTEVSE_OFF)}
        else:
            params = {"mode": str(SMARTEVSE_NORMAL), "override_current": str(round(amps * 10))}
            if self._off is False:
                # Already on: a repeated mode change would restart the firmware's mode timers.
                del params["mode"]
        await _request(self._client, "POST", SMARTEVSE_SETTINGS, False, params=params)
        self._off = amps <= 0


# ---- SmartEVSE over MQTT ------------------------------------------------------------------------

# The firmware's `State` names (its web state names) to the IEC 61851 letter.
SMARTEVSE_STATE_LETTER = {
    "Ready to Charge": "A",
    "Connected to EV": "B",
    "Charging Stopped": "B",
    "Charging": "C",
    "Stop Charging": "C",
    "D": "D",
}
# A device that published nothing for this long counts as silent even if its `connected` says online
# (the firmware republishes its live topics every few seconds while it runs).
MQTT_SILENCE_S = 90.0


class SmartEvseMqttLink(NetLink):
    """A SmartEVSE through its MQTT topics: reads `<prefix>/<Name>`, writes `<prefix>/Set/<Name>`.

    It keeps its own connection to the configured broker; a reading is the last value of each topic,
    fresh while the device's `connected` topic is not `offline` and it published within
    MQTT_SILENCE_S. Stop is `Set/Mode Off`; a current is `Set/CurrentOverride` in dA (with
    `Set/Mode Normal` when the device was off).
    """

    driver_type = "smartevse"

    def __init__(
        self,
        name: str,
        prefix: str,
        broker: tuple[bool, str, int, str | None, str | None],
        clock: Clock,
        poll_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(name, clock, poll_s, timeout_s)
        self.prefix = prefix
        self.tls, self.host, self.port, self.username, self.password = broker
        self.values: dict[str, str] = {}
        self.heard_at: float | None = None
        self._client: Any = None
        self._subscribed = asyncio.Event()

    @property
    def address(self) -> str:
        """`mqtt://host:port/<prefix>`."""
        return f"mqtt://{self.host}:{self.port}/{self.prefix}"

    def take(self, topic: str, payload: bytes) -> None:
        """Keep one message of the device's topics."""
        if not topic.startswith(self.prefix + "/") or topic.startswith(self.prefix + "/Set/"):
            return
        self.values[topic[len(self.prefix) + 1 :]] = payload.decode("utf-8", "replace").strip()
        self.heard_at = self.clock()

    def _da(self, name: str) -> float:
        text = self.values.get(name)
        try:
            value = float(text) if text is not None else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise LinkError(LinkFault.PROTOCOL, f"{self.prefix}/{name}: not a number: {text!r}")
        return value / 10

    async def fetch(self) -> DeviceState:
        """The reading the device's last messages make up; a fault while it is silent or offline."""
        if self._client is None:
            raise LinkError(LinkFault.UNREACHABLE, f"not connected to the broker {self.host}:{self.port}")
        now = self.clock()
        if self.values.get("connected") == "offline":
            raise LinkError(LinkFault.UNREACHABLE, f"{self.prefix}/connected is offline")
        if self.heard_at is None or now - self.heard_at > MQTT_SILENCE_S:
            raise LinkError(LinkFault.TIMEOUT, f"nothing on {self.prefix}/# for {MQTT_SILENCE_S:g} s")
        state = self.values.get("State")
        letter = SMARTEVSE_STATE_LETTER.get(state or "")
        if letter is None:
            raise LinkError(LinkFault.PROTOCOL, f"{self.prefix}/State: unknown state {state!r}")
        if self.values.get("EVPlugState") == "Disconnected":
            letter = "A"
        currents = tuple(
            self._da(f"EVCurrentL{i}") if f"EVCurrentL{i}" in self.values else 0.0 for i in (1, 2, 3)
        )
        wh = self.values.get("EVTotalEnergyCharged")
        kwh = float(wh) / 1000 if wh is not None and wh.lstrip("-").isdigit() else None
        temp = self.values.get("ESPTemp")
        temperature = float(temp) if temp is not None and temp.lstrip("-").isdigit() else None
        off = self.values.get("Mode") == "Off"
        override = self._da("ChargeCurrentOverride") if "ChargeCurrentOverride" in self.values else None
        reading = LinkReading(
            self.heard_at, letter, (currents[0], currents[1], currents[2]), kwh, temperature=temperature
        )
        return DeviceState(reading, 0.0 if off else override)

    async def deliver(self, amps: float) -> None:
        """`Set/Mode Off` for 0; otherwise `Set/CurrentOverride` (dA), and `Set/Mode Normal` if it was off."""
        client = self._client
        if client is None:
            raise LinkError(LinkFault.UNREACHABLE, "not connected to the broker")
        import aiomqtt

        try:
            if amps <= 0:
                await client.publish(f"{self.prefix}/Set/Mode", "Off", qos=1)
                return
            await client.publish(f"{self.prefix}/Set/CurrentOverride", str(round(amps * 10)), qos=1)
            if self.values.get("Mode") in (None, "Off"):
                await client.publish(f"{self.prefix}/Set/Mode", "Normal", qos=1)
        except aiomqtt.MqttError as exc:
            raise LinkError(LinkFault.UNREACHABLE, f"publish failed: {exc}") from None

    async def _connection(self) -> None:
        import ssl

        import aiomqtt

        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self.password,
                    identifier=f"evpilot-link-{self.name}",
                    tls_context=ssl.create_default_context() if self.tls else None,
                    timeout=self.timeout_s,
                ) as client:
                    await client.subscribe(f"{self.prefix}/#", qos=1)
                    self._client = client
                    self._subscribed.set()
                    async for message in client.messages:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
                        self.take(str(message.topic), bytes(data))
            except aiomqtt.MqttError as exc:
                log.debug("charger %s: MQTT %s:%d: %s", self.name, self.host, self.port, exc)
            finally:
                self._client = None
            await asyncio.sleep(min(self.backoff_cap_s, 2.0))

    async def run(self) -> None:
        """Keep the broker connection and exchange until cancelled."""
        connection = asyncio.create_task(self._connection())
        try:
            # The first read waits for the subscription's retained topics (at most timeout_s).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await self._subscribed.wait()
                    await asyncio.sleep(min(0.2, self.poll_s))
            await super().run()
        finally:
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection
