"""The Shelly Top AC's RPC methods on the runtime's chargers: documents, commands and service config.

Names and units are translated to the core's commands and state; auto_balance is a metered circuit node
of the site tree (`control.autobalance`), balanced by the one balancer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from evpilot import __version__
from evpilot.api.shelly.auth import DigestAuth
from evpilot.api.shelly.components import (
    APP,
    COMPONENTS,
    FW_ID,
    GEN,
    MODEL,
    TYPES,
    Component,
    Device,
    Track,
    component_config,
    component_values,
    mac_for,
    resolve,
)
from evpilot.api.shelly.rpc import (
    NO_HANDLER,
    NOT_FOUND,
    RpcError,
    int_arg,
    invalid,
    num,
    number_arg,
    params_dict,
    refused,
)
from evpilot.control.autobalance import AutoBalanceSettings
from evpilot.control.runtime import Runtime, UnknownCharger, ViewChanges
from evpilot.control.views import ChargerView
from evpilot.core import commands as cmd
from evpilot.core.errors import CommandError

# The origin of the commands this facade sends (RPC over HTTP and WebSocket alike).
ORIGIN = "rpc:shelly"
# Shelly.GetComponents answers at most this many components per page; clients page with `offset`.
PAGE_SIZE = 4

Handler = Callable[[Device, dict[str, Any], str], Any]


class ShellyFacade:
    """Translates Shelly Gen2 RPC calls to the runtime's chargers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg = rt.config.shelly
        self.auth = DigestAuth(cfg.password) if cfg.password else None
        self.balance = rt.auto_balance
        self.devices: dict[str, Device] = {}
        for cid in rt.engine.chargers:
            default = cid == rt.default_id
            mac = cfg.mac if default and cfg.mac else mac_for(cid)
            device_id = cfg.device_id if default and cfg.device_id else f"shellytopac-{mac.lower()}"
            self.devices[cid] = Device(cid, device_id, mac)
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
        rt.view_listeners.append(self._on_views)
        # Devices with an open session: when their session's whole minutes next change (clock s).
        self._minute_due: dict[str, float] = {}

    # ---- lookups and tracking -------------------------------------------------------------------

    def device(self, cid: str | None) -> Device:
        """The device of charger `cid` (the default charger for None)."""
        key = self.rt.default_id if cid is None else cid
        dev = self.devices.get(key)
        if dev is None:
            raise UnknownCharger(key)
        return dev

    def _on_views(self, topic: str, message: dict[str, Any]) -> None:
        # Track value changes as they happen: each changed view, and a session's minute count
        # (time alone changes it, so it is due even when the view is not).
        changes: ViewChanges = message["changes"]
        now = changes.at
        done = set()
        for view in changes.chargers:
            dev = self.devices.get(view.id)
            if dev is not None:
                self._track(dev, view, now)
                done.add(view.id)
        for cid, due in list(self._minute_due.items()):
            if now >= due and cid not in done:
                self._track(self.devices[cid], self.rt.views[cid], now)

    def _track(self, dev: Device, view: ChargerView, now: float, source: str = "sys") -> dict[str, Any]:
        values = component_values(dev, view, now)
        for key, value in values.items():
            track = dev.tracks.setdefault(key, Track())
            if not track.seen:
                track.value, track.seen = value, True
            elif track.value != value:
                track.value, track.source, track.ts = value, source, int(now)
        if view.session is None:
            self._minute_due.pop(dev.cid, None)
        else:
            minutes = view.session.duration_s(now) // 60
            self._minute_due[dev.cid] = view.session.started_at + (minutes + 1) * 60
        return values

    def refresh(self, dev: Device, source: str = "sys") -> dict[str, Any]:
        """Current values of the virtual components; records when each last changed."""
        return self._track(dev, self.rt.charger_view(dev.cid), self.rt.clock.now(), source)

    # ---- documents --------------------------------------------------------------------------------

    def device_info(self, dev: Device) -> dict[str, Any]:
        """`/shelly` and `Shelly.GetDeviceInfo`."""
        ch = self.rt.charger_view(dev.cid)
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
        return component_config(comp, self.rt.charger_view(dev.cid))

    def service_config(self, dev: Device) -> dict[str, Any]:
        """`Service.GetConfig` (seed 000's shape)."""
        ch = self.rt.charger_view(dev.cid)
        ab = self.balance.settings.get(dev.cid, AutoBalanceSettings())
        return {
            "auto_balance": {
                "enable": ab.enable,
                "em_ip": ab.em_ip,
                "max_current": num(ab.max_current),
                "exclude_self_current": ab.exclude_self_current,
            },
            "auto_charge": ch.auto_charge,
            "global_charge_limit": None if ch.energy_cap_kwh is None else num(ch.energy_cap_kwh),
            "global_time_limit": None if ch.time_cap_min is None else num(ch.time_cap_min),
            "id": 0,
        }

    def service_status(self, dev: Device) -> dict[str, Any]:
        """`Service.GetStatus`: the session cap flag, faults and the auto_balance meter."""
        ch = self.rt.charger_view(dev.cid)
        flags = [] if ch.limit_reached is None else [f"{ch.limit_reached.value}_limit_reached"]
        return {
            "id": 0,
            "flags": flags,
            "errors": sorted(e.value for e in ch.errors),
            "auto_balance": self.balance.status(dev.cid),
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
        ch = self.rt.charger_view(dev.cid)
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
        offset = int_arg(params, "offset") if "offset" in params else 0
        if offset < 0:
            raise invalid("Argument 'offset' must not be negative")
        dynamic_only = params.get("dynamic_only", False)
        if not isinstance(dynamic_only, bool):
            raise invalid("Argument 'dynamic_only' must be a boolean")
        include = params.get("include", ["status", "config"])
        if not isinstance(include, list) or not all(i in ("status", "config") for i in include):
            raise invalid("Argument 'include' must be a list of 'status' and 'config'")
        keys = params.get("keys")
        if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
            raise invalid("Argument 'keys' must be a list of strings")
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
            return fn(dev, resolve(ctype, params))

        return handler

    def _setter(self, ctype: str) -> Handler:
        def handler(dev: Device, params: dict[str, Any], source: str) -> Any:
            unknown = set(params) - {"id", "owner", "role", "value"}
            if unknown:
                raise invalid(f"Unknown argument(s): {', '.join(sorted(unknown))}")
            comp = resolve(ctype, params)
            if not comp.writable:
                raise invalid(f"{comp.key} ({comp.role}) is read-only")
            if "value" not in params:
                raise invalid("Argument 'value' is missing")
            value = params["value"]
            command: cmd.Command
            if comp.role == "current_limit":
                command = cmd.SetUserLimit(dev.cid, number_arg("Argument 'value'", value))
            else:
                if not isinstance(value, bool):
                    raise invalid("Argument 'value' must be a boolean")
                command = cmd.Start(dev.cid) if value else cmd.Stop(dev.cid)
            try:
                self.rt.apply(command, ORIGIN)
            except CommandError as exc:
                raise refused(exc) from None
            self.refresh(dev, source)
            return None

        return handler

    def _service(self, dev: Device, params: dict[str, Any], fn: Callable[[Device], dict[str, Any]]) -> Any:
        if "id" in params and int_arg(params, "id") != 0:
            raise RpcError(NOT_FOUND, f"Argument 'id', value {params['id']} not found!")
        return fn(dev)

    def _checked_cap(self, command: cmd.Command) -> cmd.Command:
        """A session cap the runtime takes, else an invalid-argument error naming `config.<key>`."""
        try:
            self.rt.check(command)
        except CommandError as exc:
            raise invalid(f"config.{exc.field} {exc.message}") from None
        return command

    def service_set_config(self, dev: Device, params: dict[str, Any], source: str) -> Any:
        """`Service.SetConfig` with `{id, config:{...}}` (or the config's fields flat, as evcc sends)."""
        if "id" in params and int_arg(params, "id") != 0:
            raise RpcError(NOT_FOUND, f"Argument 'id', value {params['id']} not found!")
        if "config" in params:
            extra = set(params) - {"id", "config"}
            if extra:
                raise invalid(f"Unknown argument(s): {', '.join(sorted(extra))}")
            config = params["config"]
            if not isinstance(config, dict):
                raise invalid("Argument 'config' must be an object")
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
            raise invalid(f"Unknown config field(s): {', '.join(sorted(unknown))}")
        if "id" in config and (isinstance(config["id"], bool) or config["id"] != 0):
            raise invalid("config.id must be 0")
        balance = self.balance.settings.get(dev.cid, AutoBalanceSettings())
        if "auto_balance" in config:
            balance = _merge_balance(balance, config["auto_balance"])
        if "auto_charge" in config and not isinstance(config["auto_charge"], bool):
            raise invalid("config.auto_charge must be a boolean")
        cid = dev.cid
        commands: list[cmd.Command] = []
        if "auto_charge" in config:
            commands.append(cmd.SetAutoCharge(cid, config["auto_charge"]))
        if "global_charge_limit" in config:
            commands.append(self._checked_cap(cmd.SetEnergyCap(cid, _cap(config, "global_charge_limit"))))
        if "global_time_limit" in config:
            commands.append(self._checked_cap(cmd.SetTimeCap(cid, _cap(config, "global_time_limit"))))
        try:
            self.rt.apply(commands, ORIGIN)
        except CommandError as exc:
            raise refused(exc) from None
        if "auto_balance" in config:
            self.balance.configure(dev.cid, balance)
        dev.cfg_rev += 1
        return {"restart_required": False}

    # ---- dispatch ---------------------------------------------------------------------------------

    def call(self, dev: Device, method: str, params: object, source: str) -> Any:
        """Run one RPC; raises RpcError."""
        handler = self.handlers.get(method)
        if handler is None:
            raise RpcError(NO_HANDLER, f"No handler for {method}")
        return handler(dev, params_dict(params), source)


def _cap(config: Mapping[str, Any], key: str) -> float | None:
    if key not in config or config[key] is None:
        return None
    return number_arg(f"config.{key}", config[key])


def _merge_balance(current: AutoBalanceSettings, patch: object) -> AutoBalanceSettings:
    """Apply an `auto_balance` patch; `enable: true` needs a valid IPv4 `em_ip`."""
    if not isinstance(patch, dict):
        raise invalid("config.auto_balance must be an object")
    unknown = set(patch) - {"enable", "em_ip", "max_current", "exclude_self_current"}
    if unknown:
        raise invalid(f"Unknown auto_balance field(s): {', '.join(sorted(unknown))}")
    enable, ip = patch.get("enable", current.enable), patch.get("em_ip", current.em_ip)
    limit = patch.get("max_current", current.max_current)
    exclude = patch.get("exclude_self_current", current.exclude_self_current)
    if not isinstance(enable, bool) or not isinstance(exclude, bool):
        raise invalid("auto_balance.enable and exclude_self_current must be booleans")
    if ip is not None:
        if not isinstance(ip, str):
            raise invalid("auto_balance.em_ip must be a string or null")
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise invalid(f"auto_balance.em_ip {ip!r} is not a valid IPv4 address") from None
    if enable and ip is None:
        raise invalid("auto_balance.enable needs a valid IPv4 em_ip")
    amps = number_arg("auto_balance.max_current", limit, 6.0, 200.0)
    return AutoBalanceSettings(enable, ip, amps, exclude)
