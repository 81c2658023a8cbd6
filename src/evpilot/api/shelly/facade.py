"""Shelly Gen2 RPC facade of the Shelly Top AC charger: `/shelly`, `/rpc/<Method>`, `POST /rpc`, WS `/rpc`.

Served for the default charger at the root and for every charger under `/chargers/{id}/`. Names and units
are translated to the core's commands and state; auto_balance runs in `control.autobalance`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from evpilot import __version__
from evpilot.api.facade import read_limited, replaying
from evpilot.control.autobalance import AutoBalancer, AutoBalanceSettings
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core.charger import Charger, WorkState
from evpilot.core.errors import CommandError
from evpilot.core.iec61851 import MIN_CURRENT
from evpilot.inputs import JsonError, read_json
from evpilot.sim.shelly_em import SimShellyEm

log = logging.getLogger("evpilot.shelly")

MODEL = "EVE01"
APP = "TopAC"
GEN = 2
# Firmware ids start with the build date; clients such as aioshelly gate features (virtual components
# need 20240213 or later) on it.
FW_ID = f"20251028-120000/{__version__}-evpilot"
OWNER = "service:0"
USERNAME = "admin"
MAX_BODY = 64 * 1024
# Shelly.GetComponents answers at most this many components per page; clients page with `offset`.
PAGE_SIZE = 4
# A digest nonce is accepted this long (s); after that the client gets a fresh challenge ("stale").
NONCE_TTL_S = 3600.0
# Remembered (nonce, nc, cnonce) triples: a replayed authorisation is refused.
REPLAY_MEMORY = 4096
WORK_STATE_TITLES = {
    WorkState.FREE.value: "Free",
    WorkState.INSERT.value: "Connected",
    WorkState.WAIT.value: "Waiting",
    WorkState.CHARGING.value: "Charging",
    WorkState.PAUSE.value: "Paused",
    WorkState.END.value: "Complete",
    WorkState.FAULT.value: "Fault",
}

INVALID_ARGUMENT = -103
NOT_FOUND = -105
NO_HANDLER = 404
UNAUTHORIZED = 401


class RpcError(Exception):
    """A Shelly RPC error object `{code, message}`."""

    def __init__(self, code: int, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.stale = stale

    def body(self) -> dict[str, Any]:
        """The error object."""
        return {"code": self.code, "message": self.message}


def _invalid(message: str) -> RpcError:
    return RpcError(INVALID_ARGUMENT, message)


def _http_status(code: int) -> int:
    # Real firmware answers 500 for every RPC error but 404/401; evpilot keeps 5xx for its own faults.
    if code in (NO_HANDLER, UNAUTHORIZED):
        return code
    return 400


def _n(x: float) -> float | int:
    """A number as Shelly prints it: integral values without a fraction."""
    return int(x) if float(x).is_integer() else x


# ---- components ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Component:
    """A virtual component of the Top AC, owned by `service:0`."""

    type: str
    id: int
    role: str
    name: str
    writable: bool

    @property
    def key(self) -> str:
        """The component key (`number:200`)."""
        return f"{self.type}:{self.id}"


# The Top AC's virtual components (Shelly numbers dynamic components from 200).
COMPONENTS = (
    Component("enum", 200, "work_state", "Work state", False),
    Component("number", 200, "current_limit", "Current limit", True),
    Component("object", 200, "phase_info", "Phase info", False),
    Component("boolean", 200, "start_charging", "Start charging", True),
    Component("number", 201, "energy_charge", "Session energy", False),
    Component("number", 202, "time_charge", "Session duration", False),
)
TYPES = {"Enum": "enum", "Number": "number", "Boolean": "boolean", "Object": "object"}


def _params_dict(params: object) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _invalid("params must be an object")
    return params


def _int_arg(params: Mapping[str, Any], key: str) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"Argument '{key}' must be an integer")
    return value


def _resolve(ctype: str, params: Mapping[str, Any]) -> Component:
    """The component a call addresses: by `id`, or by `owner` + `role` (as the Top AC's docs do)."""
    if "id" in params:
        cid = _int_arg(params, "id")
        for c in COMPONENTS:
            if c.type == ctype and c.id == cid:
                if "role" in params and params["role"] != c.role:
                    raise _invalid(f"Argument 'role' does not match {c.key}")
                return c
        raise RpcError(NOT_FOUND, f"Argument 'id', value {cid} not found!")
    if "owner" not in params and "role" not in params:
        raise _invalid("Argument 'id' is missing")
    owner, role = params.get("owner"), params.get("role")
    if not isinstance(owner, str) or not isinstance(role, str):
        raise _invalid("Arguments 'owner' and 'role' must be strings")
    if owner != OWNER:
        raise RpcError(NOT_FOUND, f"Argument 'owner', value {owner!r} not found!")
    for c in COMPONENTS:
        if c.type == ctype and c.role == role:
            return c
    raise RpcError(NOT_FOUND, f"Argument 'role', value {role!r} not found!")


# ---- per-charger device view ----------------------------------------------------------------------


@dataclass(slots=True)
class _Track:
    value: Any = None
    source: str = ""
    ts: int = 0
    seen: bool = False


def _mac_for(cid: str) -> str:
    # Locally administered (0x02 prefix), stable per charger id.
    return "02" + hashlib.sha256(cid.encode()).hexdigest()[:10].upper()


@dataclass(slots=True)
class Device:
    """One charger as a Shelly device: identity, value tracking and config revision."""

    cid: str
    device_id: str
    mac: str
    tracks: dict[str, _Track] = field(default_factory=dict)
    minutes: list[tuple[int, float]] = field(default_factory=list)
    cfg_rev: int = 0

    def energy_counter(self, now: float, total_kwh: float) -> dict[str, Any]:
        """Shelly's energy counter: total (Wh), by_minute (mWh of the last 3 whole minutes), minute_ts."""
        minute = int(now // 60) * 60
        if not self.minutes or self.minutes[-1][0] != minute:
            self.minutes.append((minute, total_kwh))
            del self.minutes[:-5]

        def at(ts: int) -> float | None:
            best = None
            for m, kwh in self.minutes:
                if m <= ts:
                    best = kwh
            return best

        by_minute = []
        for i in range(3):
            end, start = at(minute - 60 * i), at(minute - 60 * (i + 1))
            by_minute.append(0 if end is None or start is None else round((end - start) * 1e6, 3))
        return {"total": _n(round(total_kwh * 1000.0, 3)), "minute_ts": minute, "by_minute": by_minute}


def _phase_info(dev: Device, ch: Charger, now: float) -> dict[str, Any]:
    currents = ch.currents
    volts = ch.voltages
    if ch.config.phases == 1:
        # A 1-phase charger's meter channel is phase A of the Top AC's report.
        currents = (currents[0], 0.0, 0.0)
    powers = [i * v for i, v in zip(currents, volts, strict=True)]
    value: dict[str, Any] = {
        "counter": dev.energy_counter(now, ch.lifetime_kwh),
        "total_current": _n(round(sum(currents), 2)),
        "total_power": _n(round(sum(powers), 1)),
        "total_act_energy": _n(round(ch.lifetime_kwh, 3)),
    }
    for name, i, v, p in zip(("phase_a", "phase_b", "phase_c"), currents, volts, powers, strict=True):
        value[name] = {"voltage": _n(round(v, 1)), "current": _n(round(i, 2)), "power": _n(round(p, 1))}
    return value


def _values(dev: Device, ch: Charger, now: float) -> dict[str, Any]:
    s = ch.session
    return {
        "enum:200": ch.work_state().value,
        "number:200": _n(ch.user_limit if ch.user_limit is not None else ch.config.max_current),
        "object:200": _phase_info(dev, ch, now),
        # On while the user lets it charge: an explicit start, or auto_charge without an explicit stop.
        "boolean:200": ch.start_requested or (ch.auto_charge and not ch.paused),
        "number:201": _n(round(s.energy_kwh, 3)) if s is not None else 0,
        # Top AC reports the session duration in whole minutes.
        "number:202": int(s.duration_s(now) // 60) if s is not None else 0,
    }


# ---- digest authentication (SHA-256, as Shelly Gen2) ------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Shelly's RPC-frame digest hashes a fixed method:uri pair (there is no HTTP request line).
_FRAME_HA2 = _sha("dummy_method:dummy_uri")
_HEADER_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


class DigestAuth:
    """Issues and checks SHA-256 digest nonces for user `admin`."""

    def __init__(self, password: str) -> None:
        self.password = password
        self._secret = secrets.token_bytes(32)
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def nonce(self) -> str:
        """A fresh nonce: issue time and its MAC, so no nonce table is needed."""
        stamp = f"{int(time.time()):x}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return stamp + mac

    def _nonce_state(self, nonce: str) -> str:
        stamp, mac = nonce[:-24], nonce[-24:]
        good = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        if not stamp or not hmac.compare_digest(mac, good):
            return "bad"
        try:
            issued = int(stamp, 16)
        except ValueError:
            return "bad"
        return "ok" if 0 <= time.time() - issued <= NONCE_TTL_S else "stale"

    def _fresh(self, nonce: str, nc: str, cnonce: str) -> bool:
        key = (nonce, nc, cnonce)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)
        return True

    def _check(self, realm: str, fields: Mapping[str, Any], ha2: str) -> str:
        """'ok', 'stale' or 'bad' for the fields of a digest answer."""
        try:
            username, their_realm, nonce = fields["username"], fields["realm"], fields["nonce"]
            nc, cnonce, response = str(fields["nc"]), fields["cnonce"], fields["response"]
        except KeyError:
            return "bad"
        if not all(isinstance(x, str) for x in (username, their_realm, nonce, cnonce, response)):
            return "bad"
        if fields.get("algorithm", "SHA-256") != "SHA-256" or username != USERNAME or their_realm != realm:
            return "bad"
        state = self._nonce_state(nonce)
        if state != "ok":
            return state
        ha1 = _sha(f"{USERNAME}:{realm}:{self.password}")
        expected = _sha(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        if not hmac.compare_digest(expected, response):
            return "bad"
        return "ok" if self._fresh(nonce, nc, cnonce) else "bad"

    def check_frame(self, realm: str, auth: object) -> str:
        """Check the `auth` object of an RPC frame."""
        if not isinstance(auth, dict):
            return "bad"
        if isinstance(auth.get("nc"), bool) or not isinstance(auth.get("nc"), int | str):
            return "bad"
        return self._check(realm, auth, _FRAME_HA2)

    def check_header(self, realm: str, header: str | None, method: str, uri: str) -> str:
        """Check an HTTP `Authorization: Digest ...` header."""
        if header is None or header[:7].lower() != "digest ":
            return "bad"
        fields: dict[str, str] = {}
        for m in _HEADER_PARAM.finditer(header[7:]):
            fields[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
        # A request target with raw quotes (the seed's URLs sent by `curl -g`) cannot be parsed as a
        # quoted-string; it still matches when it appears verbatim.
        if fields.get("qop") != "auth" or (fields.get("uri") != uri and f'uri="{uri}"' not in header):
            return "bad"
        return self._check(realm, fields, _sha(f"{method}:{uri}"))

    def frame_challenge(self, realm: str, stale: bool = False) -> RpcError:
        """The 401 error an RPC frame without (valid) auth gets."""
        challenge: dict[str, Any] = {
            "auth_type": "digest",
            "nonce": self.nonce(),
            "nc": 1,
            "realm": realm,
            "algorithm": "SHA-256",
        }
        if stale:
            challenge["stale"] = True
        return RpcError(UNAUTHORIZED, json.dumps(challenge), stale)

    def www_authenticate(self, realm: str, stale: bool = False) -> str:
        """The HTTP 401 challenge header."""
        extra = ", stale=true" if stale else ""
        return f'Digest qop="auth", realm="{realm}", nonce="{self.nonce()}", algorithm=SHA-256{extra}'


# ---- the facade -----------------------------------------------------------------------------------

Handler = Callable[[Device, dict[str, Any], str], Any]
# Methods that answer without authentication, as on a real device.
PUBLIC_METHODS = frozenset({"Shelly.GetDeviceInfo"})


class ShellyFacade:
    """Translates Shelly Gen2 RPC calls to the runtime's chargers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg = rt.config.shelly
        self.auth = DigestAuth(cfg.password) if cfg.password else None
        self.balancer = AutoBalancer(rt, em_port=cfg.em_port, poll_s=cfg.em_poll_s)
        self.devices: dict[str, Device] = {}
        self.sim_em: SimShellyEm | None = None
        for cid in rt.engine.chargers:
            default = cid == rt.default_id
            mac = cfg.mac if default and cfg.mac else _mac_for(cid)
            device_id = cfg.device_id if default and cfg.device_id else f"shellytopac-{mac.lower()}"
            self.devices[cid] = Device(cid, device_id, mac)
            self.balancer.settings[cid] = self._load_balance(cid)
        self.handlers: dict[str, Handler] = {
            "Shelly.GetDeviceInfo": lambda d, p, s: self.device_info(d),
            "Shelly.GetStatus": lambda d, p, s: self.shelly_status(d),
            "Shelly.GetConfig": lambda d, p, s: self.shelly_config(d),
            "Shelly.GetComponents": lambda d, p, s: self.get_components(d, p),
            "Shelly.ListMethods": lambda d, p, s: {"methods": sorted(self.handlers)},
            "Sys.GetStatus": lambda d, p, s: self.sys_status(d),
            "Sys.GetConfig": lambda d, p, s: self.sys_config(d),
            "Service.GetConfig": lambda d, p, s: self._service(d, p, self.service_config),
            "Service.GetStatus": lambda d, p, s: self._service(d, p, self.service_status),
            "Service.SetConfig": self.service_set_config,
        }
        for prefix, ctype in TYPES.items():
            self.handlers[f"{prefix}.GetStatus"] = self._getter(ctype, self.component_status)
            self.handlers[f"{prefix}.GetConfig"] = self._getter(ctype, self.component_config)
            if ctype in ("number", "boolean"):
                self.handlers[f"{prefix}.Set"] = self._setter(ctype)
        rt.listeners.append(self._on_change)

    # ---- lookups and tracking -------------------------------------------------------------------

    def device(self, cid: str | None) -> Device:
        """The device of charger `cid` (the default charger for None)."""
        key = self.rt.default_id if cid is None else cid
        dev = self.devices.get(key)
        if dev is None:
            raise UnknownCharger(key)
        return dev

    def _on_change(self, topic: str, message: dict[str, Any]) -> None:
        if topic == "charger" and message.get("id") in self.devices:
            self.refresh(self.devices[message["id"]])

    def refresh(self, dev: Device, source: str = "sys") -> dict[str, Any]:
        """Current values of the virtual components; records when each last changed."""
        now = self.rt.clock.now()
        values = _values(dev, self.rt.charger(dev.cid), now)
        for key, value in values.items():
            track = dev.tracks.setdefault(key, _Track())
            if not track.seen:
                track.value, track.seen = value, True
            elif track.value != value:
                track.value, track.source, track.ts = value, source, int(now)
        return values

    def _load_balance(self, cid: str) -> AutoBalanceSettings:
        store = self.rt.store
        saved = store.get_setting(f"shelly:{cid}:auto_balance") if store is not None else None
        if isinstance(saved, dict):
            with contextlib.suppress(TypeError, ValueError, RpcError):
                return _merge_balance(AutoBalanceSettings(), saved)
        return AutoBalanceSettings()

    # ---- documents --------------------------------------------------------------------------------

    def device_info(self, dev: Device) -> dict[str, Any]:
        """`/shelly` and `Shelly.GetDeviceInfo`."""
        ch = self.rt.charger(dev.cid)
        return {
            "name": ch.config.name or None,
            "id": dev.device_id,
            "mac": dev.mac,
            "slot": 0,
            "model": MODEL,
            "gen": GEN,
            "fw_id": FW_ID,
            "ver": __version__,
            "app": APP,
            "auth_en": self.auth is not None,
            "auth_domain": dev.device_id if self.auth is not None else None,
        }

    def component_status(self, dev: Device, comp: Component, fresh: bool = False) -> dict[str, Any]:
        """`{value, source, last_update_ts}` of a virtual component (`fresh`: values were just refreshed)."""
        if not fresh:
            self.refresh(dev)
        track = dev.tracks[comp.key]
        return {"value": track.value, "source": track.source, "last_update_ts": track.ts}

    def component_config(self, dev: Device, comp: Component) -> dict[str, Any]:
        """The virtual component's config (as `<Type>.GetConfig` and `Shelly.GetConfig` show it)."""
        ch = self.rt.charger(dev.cid)
        doc: dict[str, Any] = {"id": comp.id, "name": comp.name, "owner": OWNER, "role": comp.role}
        access = "crw" if comp.writable else "cr"
        if comp.role == "work_state":
            doc.update(
                options=list(WORK_STATE_TITLES),
                default_value=WorkState.FREE.value,
                persisted=False,
                meta={"ui": {"view": "label", "titles": dict(WORK_STATE_TITLES)}},
            )
        elif comp.role == "current_limit":
            doc.update(
                min=_n(MIN_CURRENT),
                max=_n(ch.config.max_current),
                default_value=_n(ch.config.max_current),
                persisted=True,
                meta={"ui": {"view": "slider", "unit": "A", "step": 0.1}},
            )
        elif comp.role == "start_charging":
            doc.update(
                default_value=False,
                persisted=False,
                meta={"ui": {"view": "toggle", "titles": ["Stop", "Start"]}},
            )
        elif comp.role == "phase_info":
            doc.update(persisted=False, meta={"ui": {"view": "label"}})
        elif comp.role == "energy_charge":
            doc.update(
                min=0, max=1000, persisted=False, meta={"ui": {"view": "label", "unit": "kWh", "step": 0.001}}
            )
        else:
            doc.update(
                min=0, max=1440, persisted=False, meta={"ui": {"view": "label", "unit": "min", "step": 1}}
            )
        doc["access"] = access
        return doc

    def service_config(self, dev: Device) -> dict[str, Any]:
        """`Service.GetConfig` (seed 000's shape)."""
        ch = self.rt.charger(dev.cid)
        ab = self.balancer.settings.get(dev.cid, AutoBalanceSettings())
        return {
            "auto_balance": {
                "enable": ab.enable,
                "em_ip": ab.em_ip,
                "max_current": _n(ab.max_current),
                "exclude_self_current": ab.exclude_self_current,
            },
            "auto_charge": ch.auto_charge,
            "global_charge_limit": None if ch.energy_cap_kwh is None else _n(ch.energy_cap_kwh),
            "global_time_limit": None if ch.time_cap_min is None else _n(ch.time_cap_min),
            "id": 0,
        }

    def service_status(self, dev: Device) -> dict[str, Any]:
        """`Service.GetStatus`: the session cap flag, faults and the auto_balance meter."""
        ch = self.rt.charger(dev.cid)
        flags = [] if ch.limit_reached is None else [f"{ch.limit_reached.value}_limit_reached"]
        return {
            "id": 0,
            "flags": flags,
            "errors": sorted(e.value for e in ch.errors),
            "auto_balance": self.balancer.status(dev.cid),
        }

    def sys_status(self, dev: Device) -> dict[str, Any]:
        """`Sys.GetStatus`."""
        now = self.rt.clock.now()
        tod = self.rt.sim.tod(now) if self.rt.sim is not None else now % 86400.0
        return {
            "mac": dev.mac,
            "restart_required": False,
            "time": f"{int(tod // 3600):02d}:{int(tod % 3600 // 60):02d}",
            "unixtime": int(now),
            "uptime": int(max(0.0, now - self.rt.started_at)),
            "cfg_rev": dev.cfg_rev,
            "kvs_rev": 0,
            "webhook_rev": 0,
            "available_updates": {},
        }

    def sys_config(self, dev: Device) -> dict[str, Any]:
        """`Sys.GetConfig`."""
        ch = self.rt.charger(dev.cid)
        return {
            "device": {"name": ch.config.name or None, "mac": dev.mac, "fw_id": FW_ID, "discoverable": False},
            "location": {"tz": None, "lat": None, "lon": None},
            "ui_data": {},
            "cfg_rev": dev.cfg_rev,
        }

    def shelly_status(self, dev: Device) -> dict[str, Any]:
        """`Shelly.GetStatus`: sys, service:0 and every virtual component under its key."""
        doc: dict[str, Any] = {"sys": self.sys_status(dev), "service:0": self.service_status(dev)}
        self.refresh(dev)
        for comp in COMPONENTS:
            doc[comp.key] = self.component_status(dev, comp, fresh=True)
        return doc

    def shelly_config(self, dev: Device) -> dict[str, Any]:
        """`Shelly.GetConfig`: sys, service:0 and every virtual component under its key."""
        doc: dict[str, Any] = {"sys": self.sys_config(dev), "service:0": self.service_config(dev)}
        for comp in COMPONENTS:
            doc[comp.key] = self.component_config(dev, comp)
        return doc

    def get_components(self, dev: Device, params: dict[str, Any]) -> dict[str, Any]:
        """`Shelly.GetComponents` with `offset`, `dynamic_only`, `include` and `keys`."""
        offset = _int_arg(params, "offset") if "offset" in params else 0
        if offset < 0:
            raise _invalid("Argument 'offset' must not be negative")
        dynamic_only = params.get("dynamic_only", False)
        if not isinstance(dynamic_only, bool):
            raise _invalid("Argument 'dynamic_only' must be a boolean")
        include = params.get("include", ["status", "config"])
        if not isinstance(include, list) or not all(i in ("status", "config") for i in include):
            raise _invalid("Argument 'include' must be a list of 'status' and 'config'")
        keys = params.get("keys")
        if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
            raise _invalid("Argument 'keys' must be a list of strings")
        items: list[tuple[str, Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]] = []
        if not dynamic_only:
            items.append(("sys", lambda: self.sys_status(dev), lambda: self.sys_config(dev)))
            items.append(("service:0", lambda: self.service_status(dev), lambda: self.service_config(dev)))
        for comp in COMPONENTS:
            items.append(
                (
                    comp.key,
                    lambda c=comp: self.component_status(dev, c),  # type: ignore[misc]
                    lambda c=comp: self.component_config(dev, c),  # type: ignore[misc]
                )
            )
        if keys is not None:
            items = [i for i in items if i[0] in keys]
        page = []
        for key, status, config in items[offset : offset + PAGE_SIZE]:
            entry: dict[str, Any] = {"key": key}
            if "status" in include:
                entry["status"] = status()
            if "config" in include:
                entry["config"] = config()
            page.append(entry)
        return {"components": page, "cfg_rev": dev.cfg_rev, "offset": offset, "total": len(items)}

    # ---- commands ---------------------------------------------------------------------------------

    def _getter(self, ctype: str, fn: Callable[[Device, Component], dict[str, Any]]) -> Handler:
        def handler(dev: Device, params: dict[str, Any], source: str) -> Any:
            return fn(dev, _resolve(ctype, params))

        return handler

    def _setter(self, ctype: str) -> Handler:
        def handler(dev: Device, params: dict[str, Any], source: str) -> Any:
            unknown = set(params) - {"id", "owner", "role", "value"}
            if unknown:
                raise _invalid(f"Unknown argument(s): {', '.join(sorted(unknown))}")
            comp = _resolve(ctype, params)
            if not comp.writable:
                raise _invalid(f"{comp.key} ({comp.role}) is read-only")
            if "value" not in params:
                raise _invalid("Argument 'value' is missing")
            value = params["value"]
            action: Callable[[Charger], None]
            if comp.role == "current_limit":
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise _invalid("Argument 'value' must be a number")
                action = _set_limit(float(value))
                persist = True
            else:
                if not isinstance(value, bool):
                    raise _invalid("Argument 'value' must be a boolean")
                now = self.rt.clock.now()
                action = _start(now) if value else _stop(now)
                persist = False
            try:
                self.rt.command(dev.cid, action, persist=persist)
            except CommandError as exc:
                raise _invalid(exc.message) from None
            self.refresh(dev, source)
            return None

        return handler

    def _service(self, dev: Device, params: dict[str, Any], fn: Callable[[Device], dict[str, Any]]) -> Any:
        if "id" in params and _int_arg(params, "id") != 0:
            raise RpcError(NOT_FOUND, f"Argument 'id', value {params['id']} not found!")
        return fn(dev)

    def service_set_config(self, dev: Device, params: dict[str, Any], source: str) -> Any:
        """`Service.SetConfig` with `{id, config:{...}}` (or the config's fields flat, as evcc sends)."""
        if "id" in params and _int_arg(params, "id") != 0:
            raise RpcError(NOT_FOUND, f"Argument 'id', value {params['id']} not found!")
        if "config" in params:
            extra = set(params) - {"id", "config"}
            if extra:
                raise _invalid(f"Unknown argument(s): {', '.join(sorted(extra))}")
            config = params["config"]
            if not isinstance(config, dict):
                raise _invalid("Argument 'config' must be an object")
        else:
            config = {k: v for k, v in params.items() if k != "id"}
        unknown = set(config) - {
            "auto_balance",
            "auto_charge",
            "global_charge_limit",
            "global_time_limit",
            "id",
        }
        if unknown:
            raise _invalid(f"Unknown config field(s): {', '.join(sorted(unknown))}")
        if "id" in config and (isinstance(config["id"], bool) or config["id"] != 0):
            raise _invalid("config.id must be 0")
        balance = self.balancer.settings.get(dev.cid, AutoBalanceSettings())
        if "auto_balance" in config:
            balance = _merge_balance(balance, config["auto_balance"])
        if "auto_charge" in config and not isinstance(config["auto_charge"], bool):
            raise _invalid("config.auto_charge must be a boolean")
        energy = _cap(config, "global_charge_limit", 1000.0)
        minutes = _cap(config, "global_time_limit", 1440.0)

        def act(ch: Charger) -> None:
            if "auto_charge" in config:
                ch.set_auto_charge(config["auto_charge"])
            if "global_charge_limit" in config:
                ch.set_energy_cap(energy)
            if "global_time_limit" in config:
                ch.set_time_cap(minutes)

        try:
            self.rt.command(dev.cid, act)
        except CommandError as exc:
            raise _invalid(exc.message) from None
        if "auto_balance" in config:
            if self.rt.store is not None:
                self.rt.store.set_setting(f"shelly:{dev.cid}:auto_balance", asdict(balance))
            self.balancer.configure(dev.cid, balance)
        dev.cfg_rev += 1
        return {"restart_required": False}

    # ---- dispatch ---------------------------------------------------------------------------------

    def call(self, dev: Device, method: str, params: object, source: str) -> Any:
        """Run one RPC; raises RpcError."""
        handler = self.handlers.get(method)
        if handler is None:
            raise RpcError(NO_HANDLER, f"No handler for {method}")
        return handler(dev, _params_dict(params), source)


def _set_limit(amps: float) -> Callable[[Charger], None]:
    return lambda ch: ch.set_user_limit(amps)


def _start(now: float) -> Callable[[Charger], None]:
    return lambda ch: ch.request_start(now)


def _stop(now: float) -> Callable[[Charger], None]:
    return lambda ch: ch.request_stop(now)


def _cap(config: Mapping[str, Any], key: str, high: float) -> float | None:
    if key not in config or config[key] is None:
        return None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"config.{key} must be a number or null")
    if not 0 <= value <= high:
        raise _invalid(f"config.{key} must be between 0 and {_n(high)}")
    return float(value)


def _merge_balance(current: AutoBalanceSettings, patch: object) -> AutoBalanceSettings:
    """Apply an `auto_balance` patch; `enable: true` needs a valid IPv4 `em_ip`."""
    if not isinstance(patch, dict):
        raise _invalid("config.auto_balance must be an object")
    unknown = set(patch) - {"enable", "em_ip", "max_current", "exclude_self_current"}
    if unknown:
        raise _invalid(f"Unknown auto_balance field(s): {', '.join(sorted(unknown))}")
    enable, ip = patch.get("enable", current.enable), patch.get("em_ip", current.em_ip)
    limit = patch.get("max_current", current.max_current)
    exclude = patch.get("exclude_self_current", current.exclude_self_current)
    if not isinstance(enable, bool) or not isinstance(exclude, bool):
        raise _invalid("auto_balance.enable and exclude_self_current must be booleans")
    if ip is not None:
        if not isinstance(ip, str):
            raise _invalid("auto_balance.em_ip must be a string or null")
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise _invalid(f"auto_balance.em_ip {ip!r} is not a valid IPv4 address") from None
    if enable and ip is None:
        raise _invalid("auto_balance.enable needs a valid IPv4 em_ip")
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 6 <= limit <= 200:
        raise _invalid("auto_balance.max_current must be a number between 6 and 200")
    return AutoBalanceSettings(enable, ip, float(limit), exclude)


# ---- HTTP and WebSocket -----------------------------------------------------------------------------

_SHELLY_PATH = re.compile(r"^(?:/chargers/[^/]+)?/(?:shelly|rpc)(?:/.*)?$")


_GET_PATH = re.compile(r"^(?:/chargers/([^/]+))?/(?:shelly|rpc/([^/]+))$")
ShellyGet = Callable[[str | None], Awaitable[Response]]
RestGet = Callable[[Request, str | None, str], Awaitable[Response]]


class _ShellyFront:
    """In front of everything on the Shelly paths: refuses oversized bodies with a Shelly error object,
    and answers GETs directly (they are polled hard; this spares them the router's linear scan and the
    middleware stack). The same handlers are also normal routes, for POST and the OpenAPI document.
    """

    def __init__(self, app: ASGIApp, shelly: ShellyGet, rest: RestGet) -> None:
        self.app = app
        self.shelly = shelly
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _SHELLY_PATH.match(scope["path"]):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                await _too_large()(scope, receive, send)
                return
            if length is None and b"transfer-encoding" in headers:
                # A chunked body is read up to the limit here, so it is refused exactly as a sized one.
                messages = await read_limited(receive, MAX_BODY)
                if messages is None:
                    await _too_large()(scope, receive, send)
                    return
                receive = replaying(messages, receive)
            m = _GET_PATH.match(scope["path"]) if scope["method"] == "GET" else None
            if m is not None:
                cid, method = m.group(1), m.group(2)
                if method is None:
                    response = await self.shelly(cid)
                else:
                    response = await self.rest(Request(scope, receive), cid, method)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_large() -> JSONResponse:
    return JSONResponse(
        {"code": INVALID_ARGUMENT, "message": f"request body over {MAX_BODY} bytes"}, status_code=413
    )


def _query_params(query: bytes) -> dict[str, Any]:
    """Query arguments as a Shelly device reads them: each value is JSON (`role="x"`, `value=10`)."""
    params: dict[str, Any] = {}
    for part in query.decode("latin-1").split("&"):
        if not part:
            continue
        key, _, raw = part.partition("=")
        key, raw = unquote_plus(key), unquote_plus(raw)
        try:
            params[key] = read_json(raw)
        except JsonError as exc:
            shown = f"Argument '{key[:40]}': {raw[:60]!r}"
            raise _invalid(f"{shown} is not a JSON value (quote strings): {exc}") from None
    return params


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _invalid(f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_uri(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    qs = request.scope.get("query_string", b"")
    return raw.decode("latin-1") + ("?" + qs.decode("latin-1") if qs else "")


def build_router(facade: ShellyFacade) -> tuple[APIRouter, ShellyGet, RestGet]:
    """The Shelly routes at the root and under `/chargers/{cid}`, and the two GET handlers."""
    r = APIRouter(tags=["shelly"])

    def http_auth(request: Request, dev: Device, method: str, frame_auth: object = None) -> Response | None:
        auth = facade.auth
        if auth is None or method in PUBLIC_METHODS:
            return None
        state = "bad"
        if frame_auth is not None:
            state = auth.check_frame(dev.device_id, frame_auth)
        if state != "ok":
            header_state = auth.check_header(
                dev.device_id, request.headers.get("authorization"), request.method, _request_uri(request)
            )
            state = "ok" if header_state == "ok" else ("stale" if "stale" in (state, header_state) else "bad")
        if state == "ok":
            return None
        return JSONResponse(
            {"code": UNAUTHORIZED, "message": "Unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": auth.www_authenticate(dev.device_id, state == "stale")},
        )

    def rest_error(exc: RpcError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=_http_status(exc.code))

    def lookup(cid: str | None) -> Device | JSONResponse:
        try:
            return facade.device(cid)
        except UnknownCharger:
            return JSONResponse({"code": NOT_FOUND, "message": f"No charger {cid!r}"}, status_code=404)

    async def shelly(cid: str | None) -> Response:
        dev = lookup(cid)
        if isinstance(dev, Response):
            return dev
        return JSONResponse(facade.device_info(dev))

    async def rest(request: Request, cid: str | None, method: str) -> Response:
        dev = lookup(cid)
        if isinstance(dev, Response):
            return dev
        denied = http_auth(request, dev, method)
        if denied is not None:
            return denied
        try:
            params = _query_params(request.scope.get("query_string", b""))
            if request.method == "POST":
                body = await _read_body(request)
                if body.strip():
                    try:
                        doc = read_json(body)
                    except JsonError as exc:
                        raise _invalid(f"malformed JSON body: {exc}") from None
                    if not isinstance(doc, dict):
                        raise _invalid("the body must be a JSON object")
                    if isinstance(doc.get("method"), str) and "params" in doc:
                        # A whole frame posted to /rpc/<Method> (evcc does this): use its params.
                        if doc["method"] != method:
                            raise _invalid(
                                f"frame method {doc['method']!r} differs from the URL's {method!r}"
                            )
                        doc = _params_dict(doc["params"])
                    params.update(doc)
            result = facade.call(dev, method, params, "HTTP_in")
        except RpcError as exc:
            return rest_error(exc)
        return JSONResponse(result)

    async def frame(request: Request, cid: str | None) -> Response:
        dev = lookup(cid)
        if isinstance(dev, Response):
            return dev
        try:
            body = await _read_body(request)
            try:
                doc = read_json(body)
            except JsonError as exc:
                raise _invalid(f"malformed JSON frame: {exc}") from None
        except RpcError as exc:
            return JSONResponse({"id": None, "src": dev.device_id, "error": exc.body()}, status_code=400)
        if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
            err = _invalid("a frame is an object with a string 'method'")
            return JSONResponse({"id": None, "src": dev.device_id, "error": err.body()}, status_code=400)
        reply: dict[str, Any] = {"id": doc.get("id"), "src": dev.device_id}
        if isinstance(doc.get("src"), str):
            reply["dst"] = doc["src"]
        denied = http_auth(request, dev, doc["method"], doc.get("auth"))
        if denied is not None:
            return denied
        try:
            reply["result"] = facade.call(dev, doc["method"], doc.get("params"), "HTTP_in")
        except RpcError as exc:
            reply["error"] = exc.body()
        return JSONResponse(reply)

    @r.get("/shelly", summary="Shelly device info (default charger)")
    async def shelly_root() -> Response:
        return await shelly(None)

    @r.get("/chargers/{cid}/shelly", summary="Shelly device info of one charger")
    async def shelly_charger(cid: str) -> Response:
        return await shelly(cid)

    # One route per HTTP method: a route with two methods gets one operation id twice in OpenAPI.
    async def rpc_root(request: Request, method: str) -> Response:
        return await rest(request, None, method)

    async def rpc_charger(request: Request, cid: str, method: str) -> Response:
        return await rest(request, cid, method)

    for verb in ("GET", "POST"):
        low = verb.lower()
        r.add_api_route(
            "/rpc/{method}",
            rpc_root,
            methods=[verb],
            name=f"rpc_{low}",
            operation_id=f"shelly_rpc_{low}",
            summary=f"Shelly RPC call ({verb}), arguments as JSON values",
        )
        r.add_api_route(
            "/chargers/{cid}/rpc/{method}",
            rpc_charger,
            methods=[verb],
            name=f"rpc_charger_{low}",
            operation_id=f"shelly_rpc_charger_{low}",
            summary=f"Shelly RPC call ({verb}) on a charger",
        )

    @r.post("/rpc", summary="Shelly RPC frame {id, src, method, params}")
    async def frame_root(request: Request) -> Response:
        return await frame(request, None)

    @r.post("/chargers/{cid}/rpc", summary="Shelly RPC frame on a charger")
    async def frame_charger(request: Request, cid: str) -> Response:
        return await frame(request, cid)

    @r.websocket("/rpc")
    async def ws_root(socket: WebSocket) -> None:
        await _serve_ws(facade, socket, None)

    @r.websocket("/chargers/{cid}/rpc")
    async def ws_charger(socket: WebSocket, cid: str) -> None:
        await _serve_ws(facade, socket, cid)

    return r, shelly, rest


async def _serve_ws(facade: ShellyFacade, socket: WebSocket, cid: str | None) -> None:
    """RPC frames over a WebSocket; after the client's first request, NotifyFullStatus then NotifyStatus."""
    try:
        dev = facade.device(cid)
    except UnknownCharger:
        await socket.close(code=1008)
        return
    await socket.accept()
    rt = facade.rt
    lock = asyncio.Lock()
    peer: dict[str, Any] = {"src": None, "last": None}

    async def send(doc: dict[str, Any]) -> None:
        async with lock:
            await socket.send_text(json.dumps(doc))

    async def notify() -> None:
        q = rt.subscribe()
        try:
            while True:
                item = await q.get()
                if peer["last"] is None or item.get("topic") != "charger":
                    continue
                if item["message"].get("id") != dev.cid:
                    continue
                status = facade.shelly_status(dev)
                changed = {k: v for k, v in status.items() if _settled(peer["last"].get(k)) != _settled(v)}
                peer["last"] = status
                if changed:
                    params = {"ts": round(rt.clock.now(), 2), **changed}
                    await send(
                        {"src": dev.device_id, "dst": peer["src"], "method": "NotifyStatus", "params": params}
                    )
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        except Exception as exc:  # counted and logged; the client is closed so it reconnects afresh
            rt.supervisor.record("websocket", exc)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await socket.close(code=1011)
        finally:
            rt.unsubscribe(q)

    pump = asyncio.create_task(notify(), name=f"shelly-ws-{dev.cid}")
    try:
        while True:
            msg = await socket.receive()
            if msg["type"] == "websocket.disconnect":
                break
            text = msg.get("text")
            if text is None and msg.get("bytes") is not None:
                text = msg["bytes"].decode("utf-8", errors="replace")
            reply, trusted = await _ws_frame(facade, dev, text or "")
            if reply is None:
                continue
            await send(reply)
            src = reply.get("dst")
            if trusted and isinstance(src, str) and peer["src"] is None:
                peer["src"] = src
                status = facade.shelly_status(dev)
                peer["last"] = status
                params = {"ts": round(rt.clock.now(), 2), **status}
                await send({"src": dev.device_id, "dst": src, "method": "NotifyFullStatus", "params": params})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await pump
        with contextlib.suppress(Exception):
            await socket.close()


# Sys fields that change every second; like a device, they alone do not trigger a NotifyStatus.
_CLOCK_FIELDS = frozenset({"unixtime", "uptime", "time"})


def _settled(doc: object) -> object:
    if isinstance(doc, dict) and "uptime" in doc:
        return {k: v for k, v in doc.items() if k not in _CLOCK_FIELDS}
    return doc


async def _ws_frame(facade: ShellyFacade, dev: Device, text: str) -> tuple[dict[str, Any] | None, bool]:
    """The reply to one WebSocket frame (None for a notification) and whether the caller is now trusted.

    A client is trusted (gets status notifications) after a successful request that needed no password
    or proved it.
    """
    if len(text) > MAX_BODY:
        return {
            "id": None,
            "src": dev.device_id,
            "error": _invalid(f"frame over {MAX_BODY} bytes").body(),
        }, False
    try:
        doc = read_json(text)
    except JsonError as exc:
        error = _invalid(f"malformed JSON frame: {exc}").body()
        return {"id": None, "src": dev.device_id, "error": error}, False
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        err = _invalid("a frame needs a string 'method'").body()
        return {"id": None, "src": dev.device_id, "error": err}, False
    if "id" not in doc:
        return None, False
    reply: dict[str, Any] = {"id": doc["id"], "src": dev.device_id}
    if isinstance(doc.get("src"), str):
        reply["dst"] = doc["src"]
    method = doc["method"]
    try:
        auth = facade.auth
        if auth is not None and method not in PUBLIC_METHODS:
            state = auth.check_frame(dev.device_id, doc.get("auth"))
            if state != "ok":
                raise auth.frame_challenge(dev.device_id, stale=state == "stale")
        reply["result"] = facade.call(dev, method, doc.get("params"), "WS_in")
    except RpcError as exc:
        reply["error"] = exc.body()
        return reply, False
    return reply, facade.auth is None or method not in PUBLIC_METHODS


# ---- mounting -------------------------------------------------------------------------------------


def mount(app: FastAPI, rt: Runtime) -> ShellyFacade:
    """Serve the Shelly facade on `app` and run auto_balance (and the simulated EM) with the app."""
    facade = ShellyFacade(rt)
    router, shelly, rest = build_router(facade)
    app.include_router(router)
    app.add_middleware(_ShellyFront, shelly=shelly, rest=rest)
    app.state.shelly = facade
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            sim_em = None
            port = rt.config.shelly.sim_em_port
            if port is not None and rt.sim is not None:
                sim_em = SimShellyEm(rt.sim.mains_meter)
                await sim_em.start("127.0.0.1", port)
                log.info("simulated Shelly Pro 3EM on http://127.0.0.1:%d", sim_em.port)
            facade.sim_em = sim_em
            await facade.balancer.start()
            try:
                yield state
            finally:
                await facade.balancer.stop()
                if sim_em is not None:
                    await sim_em.stop()

    app.router.lifespan_context = lifespan
    return facade
