"""The SmartEVSE firmware's MQTT topics (`<prefix>/<Name>` out, `<prefix>/Set/<Name>` in).

Rendered and taken through `smartevse.vocab`, like the REST facade: currents in dA, the firmware's
state, error and mode names, its retain flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evpilot.api.mqtt_payload import Misrouted, Out, Rejected, parse_int, parse_ints
from evpilot.api.smartevse import vocab
from evpilot.control.runtime import Runtime
from evpilot.control.views import ChargerView, SiteView
from evpilot.core import commands as cmd
from evpilot.core.errors import CommandError, check_range
from evpilot.devices.evmeter import ApiFedEvMeter, EvMeterReading

# The origin of the commands sent on these topics.
ORIGIN = "mqtt:smartevse"
# Firmware settings evpilot has no counterpart for: refused by name.
UNSUPPORTED = frozenset(
    {
        "CPPWMOverride",
        "CustomButton",
        "RequiredEVCCID",
        "ColorOff",
        "ColorNormal",
        "ColorSmart",
        "ColorSolar",
        "ColorCustom",
        "CableLock",
    }
)


class SmartEvseTopics:
    """The SmartEVSE topics of the chargers that carry them (charger id -> topic prefix)."""

    def __init__(self, rt: Runtime, prefixes: Mapping[str, str]) -> None:
        self.rt = rt
        self.prefixes = dict(prefixes)
        self._by_prefix = {sp: cid for cid, sp in self.prefixes.items()}
        self._loadbl = vocab.loadbl_roles(list(rt.engine.chargers))
        self._site_values: dict[str, str] = {}

    def __contains__(self, cid: object) -> bool:
        return cid in self.prefixes

    def subscriptions(self) -> list[str]:
        """The topic filters of the `Set/` commands."""
        return [f"{sp}/Set/#" for sp in self.prefixes.values()]

    def availability(self) -> list[str]:
        """The firmware's `connected` topics (online / offline)."""
        return [f"{sp}/connected" for sp in self.prefixes.values()]

    def route(self, topic: str) -> tuple[str, str] | None:
        """(charger, setting) of a `Set/` topic; None if it is not one of ours."""
        head, _, what = topic.rpartition("/")
        if head.endswith("/Set"):
            cid = self._by_prefix.get(head[:-4])
            if cid is not None:
                return cid, what
        for sp, cid in self._by_prefix.items():
            if topic.startswith(sp + "/Set/"):
                raise Misrouted(cid, f"unknown SmartEVSE topic {topic[len(sp) :]!r}")
        return None

    def site_key(self, site: SiteView) -> tuple[Any, ...]:
        """What the per-charger topics take from the site: a change re-renders every charger."""
        return (site.fallback, site.config.solar.stop_min)

    def render(self, v: ChargerView, site: SiteView, now: float) -> list[Out]:
        """The firmware's own topics of one charger (units: dA for currents, W, Wh), its retain flags."""
        sp = self.prefixes[v.id]
        st = vocab.status(v, site)
        session_kwh = v.session.energy_kwh if v.session is not None else 0.0
        da = vocab.deciamps
        a = v.currents
        retained = {
            "Mode": vocab.mode_of(v).mqtt_name,
            "Access": "Allow" if v.enabled else "Deny",
            "State": st.state,
            "Error": st.error,
            "ChargeCurrent": str(da(round(v.signaled, 1))),
            "ChargeCurrentOverride": str(da(v.override)),
            "MaxCurrent": str(da(v.config.max_current)),
            "EVPlugState": "Connected" if v.plugged else "Disconnected",
            "EVEnergyCharged": str(round(round(session_kwh, 3) * 1000)),
            "EnableC2": vocab.C2_NAME[v.phase_mode],
        }
        live = {
            "NrOfPhases": str(v.active_phases),
            "EVChargePower": str(round(round(v.power_w, 1))),
            "EVTotalEnergyCharged": str(round(round(v.lifetime_kwh, 3) * 1000)),
            "ESPTemp": str(round(round(v.temperature, 1))),
            "SolarStopTimer": str(vocab.solar_stop_timer(v, site, now)),
            "LoadBl": str(self._loadbl[v.id]),
            "EVCurrentL1": str(da(round(a[0], 2))),
            "EVCurrentL2": str(da(round(a[1], 2))),
            "EVCurrentL3": str(da(round(a[2], 2))),
        }
        outs = [Out(f"{sp}/{k}", value) for k, value in retained.items()]
        outs += [Out(f"{sp}/{k}", value, retain=False) for k, value in live.items()]
        return outs

    def render_site(self, site: SiteView, refresh: bool = False) -> list[Out]:
        """The site's values every charger's prefix carries: mains currents, home battery current.

        Nothing when they are what the last call rendered, unless `refresh`.
        """
        values: dict[str, str] = {}
        if site.mains is not None:
            for i, amps in enumerate(site.mains.currents):
                values[f"MainsCurrentL{i + 1}"] = str(vocab.deciamps(round(amps, 2)))
        if site.battery_current is not None:
            values["HomeBatteryCurrent"] = str(vocab.deciamps(site.battery_current))
        if values == self._site_values and not refresh:
            return []
        self._site_values = values
        return [
            Out(f"{sp}/{k}", value, retain=False)
            for sp in self.prefixes.values()
            for k, value in values.items()
        ]

    def handle(self, cid: str, what: str, text: str, ev_meters: Mapping[str, ApiFedEvMeter]) -> None:
        """Validate and apply one `Set/<what>` command; raises Rejected (or CommandError)."""
        rt = self.rt
        rt.charger(cid)
        now = rt.clock.now()
        if what == "Mode":
            mode = vocab.MODE_BY_NAME.get(text)
            if mode is None:
                raise Rejected(f"Mode: {text!r} is not one of {', '.join(vocab.MODE_BY_NAME)}")
            rt.apply(vocab.mode_commands(cid, mode), ORIGIN)
        elif what == "CurrentOverride":
            da = parse_int(text, what)
            try:
                rt.apply(cmd.SetOverride(cid, da / 10 if da else None), ORIGIN)
            except CommandError as exc:
                low, high = exc.allowed or (0.0, 0.0)
                allowed = f"0 or {low * 10:g}-{high * 10:g} dA"
                raise Rejected(f"CurrentOverride: {da} dA is outside {allowed}") from None
        elif what == "CurrentMaxSumMains":
            amps = parse_int(text, what)
            try:
                rt.apply(cmd.SetCapacityLimit(amps or None), ORIGIN)
            except CommandError as exc:
                low, high = exc.allowed or (0.0, 0.0)
                raise Rejected(f"CurrentMaxSumMains: {amps} A is outside 0 or {low:g}-{high:g} A") from None
        elif what == "MainsMeter":
            l1, l2, l3 = parse_ints(text, 3, what, "L1:L2:L3")
            for x in (l1, l2, l3):
                if not -2000 < x < 2000:
                    raise Rejected(f"MainsMeter: {x} dA is outside -2000..2000 dA")
            if rt.config.site.mains_meter != "api":
                raise Rejected(
                    "MainsMeter: the mains meter is not fed through the API (site.mains_meter: api)"
                )
            rt.api_meter.push((l1 / 10, l2 / 10, l3 / 10), now)
        elif what == "EVMeter":
            l1, l2, l3, w, wh = parse_ints(text, 5, what, "L1:L2:L3:W:Wh")
            phases = (l1, l2, l3)
            if any(not -1 <= x < 1000 for x in phases):
                raise Rejected("EVMeter: currents must be 0..999 dA (or -1 = unknown)")
            if w < -1 or wh < -1:
                raise Rejected("EVMeter: W and Wh must be >= 0 (or -1 = unknown)")
            currents = None if -1 in phases else (l1 / 10, l2 / 10, l3 / 10)
            reading = EvMeterReading(
                currents, None if w == -1 else float(w), None if wh == -1 else wh / 1000, now
            )
            ev_meters[cid].push(reading)
        elif what == "HomeBatteryCurrent":
            bound = vocab.MAX_BATTERY_DA
            battery = round(check_range(what, parse_int(text, what), -bound, bound, " dA"))
            rt.engine.battery.push(vocab.battery_amps(battery), now)
            rt.recompute()
        elif what == "EnableC2":
            names = vocab.ENABLE_C2
            if text[:1].isdigit():
                index = parse_int(text, what)
                if not 0 <= index < len(names):
                    raise Rejected(f"EnableC2: {index} is outside 0-{len(names) - 1}")
            elif text in names:
                index = names.index(text)
            else:
                raise Rejected(f"EnableC2: {text!r} is not 0-4 or one of {', '.join(names)}")
            rt.apply(cmd.SetPhaseMode(cid, vocab.C2_PHASE_MODES[index]), ORIGIN)
        elif what in UNSUPPORTED:
            raise Rejected(f"SmartEVSE setting {what!r} is not supported by evpilot")
        else:
            raise Rejected(f"unknown SmartEVSE topic 'Set/{what[:40]}'")
