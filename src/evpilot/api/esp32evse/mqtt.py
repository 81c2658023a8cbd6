"""The ESP32-EVSE Home Assistant bridge's MQTT topics: retained `<id>/state`, commands on `<id>/<cmd>/set`."""

from __future__ import annotations

import json
from collections.abc import Mapping

from evpilot.api.esp32evse import vocab
from evpilot.api.mqtt_payload import Misrouted, Out, parse_bool, parse_number
from evpilot.control.runtime import Runtime
from evpilot.control.views import ChargerView
from evpilot.core import commands as cmd

COMMANDS = ("enabled", "current")
# The origin of the commands sent on these topics.
ORIGIN = "mqtt:esp32evse"


class Esp32Topics:
    """The ESP32-EVSE bridge topics of the chargers that carry them (charger id -> bridge id)."""

    def __init__(self, rt: Runtime, idents: Mapping[str, str]) -> None:
        self.rt = rt
        self.idents = dict(idents)
        self._by_ident = {ident: cid for cid, ident in self.idents.items()}

    def __contains__(self, cid: object) -> bool:
        return cid in self.idents

    def subscriptions(self) -> list[str]:
        """The topic filters of the commands."""
        return [f"{ident}/+/set" for ident in self.idents.values()]

    def route(self, topic: str) -> tuple[str, str] | None:
        """(charger, command) of a `<id>/<cmd>/set` topic; None if it is not one of ours."""
        head, _, what = topic.rpartition("/")
        if what != "set":
            return None
        ident, _, cmd = head.rpartition("/")
        cid = self._by_ident.get(ident)
        if cid is None:
            return None
        if cmd not in COMMANDS:
            raise Misrouted(cid, f"unknown ESP32-EVSE command {cmd!r} ({', '.join(COMMANDS)})")
        return cid, cmd

    def render(self, v: ChargerView) -> list[Out]:
        """The bridge's retained `<id>/state` document."""
        session_kwh = round(v.session.energy_kwh, 3) if v.session is not None else 0.0
        state = v.pilot.value
        doc = {
            "state": state,
            "charging": state in vocab.CHARGING_STATES,
            "enabled": v.enabled,
            "error": bool(v.errors),
            "power": round(round(v.power_w, 1), 1),
            "current": vocab.charging_current(v.user_limit, v.config.max_current),
            "session_energy": round(session_kwh * 1000, 1),
            "temperature": round(round(v.temperature, 1), 1),
        }
        return [Out(f"{self.idents[v.id]}/state", json.dumps(doc, separators=(",", ":")))]

    def handle(self, cid: str, what: str, text: str) -> None:
        """Validate and apply one command; raises Rejected (or CommandError)."""
        if what == "enabled":
            self.rt.apply(cmd.SetEnabled(cid, parse_bool(text, what)), ORIGIN)
        else:
            self.rt.apply(cmd.SetUserLimit(cid, vocab.tenths(parse_number(text, what))), ORIGIN)
