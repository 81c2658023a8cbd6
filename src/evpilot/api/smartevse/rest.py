"""SmartEVSE-3 REST facade (`/settings`, `/currents`, `/ev_meter`): the firmware's names and units.

Units at this edge: override and measured currents in dA (core A × 10), MIN/MAX/MAINS/START/IMPORT
in A, timers in minutes, EV meter power in kW and energy in kWh with one decimal. Parameters come in
the query string as the firmware takes them. A refused value is answered in the firmware's style,
`{"<param>": "Value not allowed!"}`, with HTTP 400, and nothing of the request is applied.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from evpilot import __version__, inputs
from evpilot.api.edge import Problem, Refusal, json_response
from evpilot.api.facade import CHARGER_PREFIX, BodyLimit, Routes
from evpilot.api.smartevse import vocab
from evpilot.control.runtime import Runtime, UnknownCharger
from evpilot.core import commands as cmd
from evpilot.core.charger import Charger
from evpilot.core.errors import CommandError
from evpilot.core.iec61851 import duty_for_current
from evpilot.core.schedule import Schedule
from evpilot.devices.apifed import ImplausibleReading
from evpilot.devices.evmeter import EvMeterReading
from evpilot.inputs import NumberError

NOT_ALLOWED = "Value not allowed!"
# The origin of the commands this API sends.
ORIGIN = "rest:smartevse"
MAX_BODY = 16 * 1024
# A measured current in dA may be at most ±1000 A, as in the native API.
MAX_DECIAMPS = 10_000

# evse.mode is the firmware's internal Mode: 0 normal, 1 smart, 2 solar.
EVSE_MODE = {"normal": 0, "smart": 1, "solar": 2, "min+solar": 2, "off": 0}
METER_NAME = {"api": "API", "sim": "Sim", "none": "Disabled"}


def _meter_name(setting: object) -> str:
    """The firmware's name for the mains meter; a driver mapping shows its model or type."""
    if isinstance(setting, str):
        return METER_NAME.get(setting, "Disabled")
    model = getattr(setting, "model", None)
    return (
        str(model).upper()
        if model
        else {"homewizard": "HomeWizard", "shelly": "Shelly"}.get(str(getattr(setting, "type", "")), "Custom")
    )


def refused(errors: dict[str, Any], status: int = 400) -> Refusal:
    """The firmware's refusal `{param: message}` as evpilot's refusal (the firmware's value kept as shown)."""
    problems = [Problem(name, str(value), shown=value) for name, value in errors.items()]
    return Refusal(status, "invalid" if status == 400 else "not_found", problems)


def firmware_body(refusal: Refusal) -> Response:
    """A refusal as the firmware answers it: `{param: message}` (HTTP 400 or 404)."""
    doc = {p.field: p.detail if p.shown is None else p.shown for p in refusal.problems}
    return json_response(doc, refusal.status)


def _int(text: str | None) -> int | None:
    """The parameter as an ASCII decimal integer (inputs.parse_int), None when it is not one."""
    if text is None:
        return None
    try:
        return inputs.parse_int(text)
    except NumberError:
        return None


_dA = vocab.deciamps


def settings_doc(rt: Runtime, cid: str) -> dict[str, Any]:
    """The firmware's `GET /settings` document for one charger (rendered from the runtime's views)."""
    v = rt.charger_view(cid)
    sv = rt.site_view()
    now = rt.clock.now()
    site = sv.config
    shown = vocab.mode_of(v)
    st = vocab.status(v, sv)
    # CIRCUIT is the circuit the charger is configured on, not a Shelly auto_balance node above it.
    circuit_cfg = sv.circuit(rt.auto_balance.home(cid))
    circuit = circuit_cfg.limit if circuit_cfg is not None else site.mains_limit
    schedule = rt.schedules.get(cid, Schedule())
    mains = sv.mains
    mains_dA = [_dA(a) for a in mains.currents] if mains is not None else [0, 0, 0]
    ev_dA = [_dA(a) for a in v.currents]
    session_kwh = v.session.energy_kwh if v.session is not None else 0.0
    meter = {"L1": mains_dA[0], "L2": mains_dA[1], "L3": mains_dA[2]}
    import_kwh = export_kwh = 0.0
    if mains is not None and mains.meter is not None:
        import_kwh, export_kwh = mains.meter.import_kwh, mains.meter.export_kwh
    elif "mains" in rt.meters:
        full = rt.meters["mains"].full()
        if full is not None:
            import_kwh, export_kwh = full.import_kwh or 0.0, full.export_kwh or 0.0
    drawing = v.drawing
    return {
        "version": __version__,
        "serialnr": zlib.crc32(cid.encode()) % 100_000,
        "mode": shown.name,
        "mode_id": shown.mode_id,
        "car_connected": v.plugged,
        "evse": {
            "temp": round(v.temperature),
            "temp_max": round(v.config.max_temp),
            "connected": v.plugged,
            "access": v.enabled,
            "mode": EVSE_MODE[v.mode],
            "loadbl": vocab.loadbl(rt, cid),
            # The firmware reports the PWM timer value, 1024 = 100 % (no PWM).
            "pwm": round(duty_for_current(v.signaled) * 10.24),
            "solar_stop_timer": vocab.solar_stop_timer(v, sv, now),
            "state": st.state,
            "state_id": st.state_id,
            "error": st.error,
            "error_id": st.error_id,
            "rfid": "Not Installed",
        },
        "settings": {
            "charge_current": _dA(v.signaled),
            "override_current": _dA(v.override) if v.override is not None else 0,
            "current_min": v.config.min_current,
            "current_max": v.config.max_current,
            "current_main": site.mains_limit,
            "current_max_circuit": circuit,
            "current_max_sum_mains": site.capacity_limit or 0,
            "max_sum_mains_time": round(site.cap_stop_s / 60.0),
            "solar_max_import": site.solar.max_import,
            "solar_start_current": site.solar.start_current,
            "solar_stop_time": site.solar.stop_min,
            "enable_C2": vocab.C2_NAME[v.phase_mode],
            "mains_meter": _meter_name(sv.mains_meter),
            # Unix time, 0 = none, as the firmware shows its delayed charging times.
            "starttime": round(schedule.start_at or 0),
            "stoptime": round(schedule.stop_at or 0),
            "repeat": int(schedule.repeat),
        },
        "home_battery": {
            "current": _dA(sv.battery_current) if sv.battery_current is not None else 0,
            "last_update": round(sv.battery_at) if sv.battery_at is not None else 0,
        },
        "ev_meter": {
            "description": "evpilot",
            "address": 0,
            "import_active_power": round(v.power_w / 1000.0, 1),
            "total_kwh": round(v.lifetime_kwh, 1),
            "charged_kwh": round(session_kwh, 1),
            "currents": {"TOTAL": sum(ev_dA), "L1": ev_dA[0], "L2": ev_dA[1], "L3": ev_dA[2]},
            "import_active_energy": round(v.lifetime_kwh, 1),
            "export_active_energy": 0.0,
        },
        "mains_meter": {
            "import_active_energy": round(import_kwh, 1),
            "export_active_energy": round(export_kwh, 1),
        },
        "phase_currents": {
            "TOTAL": sum(mains_dA),
            **meter,
            "last_data_update": round(mains.taken_at) if mains is not None else 0,
            "charging_L1": drawing[0],
            "charging_L2": drawing[1],
            "charging_L3": drawing[2],
            "original_data": {"TOTAL": sum(mains_dA), **meter},
        },
        "backlight": {"timer": 0, "status": "N/A"},
    }


def _local_time(rt: Runtime, text: str) -> float | None:
    """A firmware date-time (YYYY-MM-DDTHH:MM, local time) as clock epoch seconds; None if malformed."""
    try:
        naive = datetime.strptime(text, SCHEDULE_FORMAT)
    except ValueError:
        return None
    local = naive.replace(tzinfo=UTC).timestamp()
    return local - rt.utc_offset(rt.clock.now())


def _schedule(rt: Runtime, q: Any, errors: dict[str, Any]) -> Schedule | None:
    """The start/stop schedule `starttime`, `stoptime` and `repeat` ask for (errors by name), or None."""
    if "starttime" not in q:
        for name in ("stoptime", "repeat"):
            if name in q:
                errors[name] = "only with a starttime"
        return None
    times: dict[str, float | None] = {"starttime": None, "stoptime": None}
    for name in times:
        if name in q:
            times[name] = _local_time(rt, q[name])
            if times[name] is None:
                errors[name] = "expected YYYY-MM-DDTHH:MM (local time)"
    repeat = _int(q["repeat"]) if "repeat" in q else 0
    if repeat not in (0, 1):
        errors["repeat"] = NOT_ALLOWED
    start = times["starttime"]
    if start is None or any(n in errors for n in ("starttime", "stoptime", "repeat")):
        return None
    try:
        return rt.check_schedule(start, times["stoptime"], repeat == 1)
    except CommandError as exc:
        errors[exc.field] = exc.message
        return None


def _query(names: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "parameters": [
            {"name": n, "in": "query", "required": False, "schema": {"type": "string"}, "description": d}
            for n, d in names
        ]
    }


SETTINGS_PARAMS = [
    ("mode", "0 OFF, 1 NORMAL, 2 SOLAR, 3 SMART"),
    ("override_current", "dA; 0 = off, else MIN×10 to MAX×10 (NORMAL and SMART only)"),
    ("disable_override_current", "any value: remove the override"),
    ("current_min", "MIN, A per phase, 6-16"),
    ("current_max_sum_mains", "CAPACITY, A summed over the phases: 0 (off) or 10-600"),
    ("max_sum_mains_timer", "CAP STOP, minutes 0-60"),
    ("enable_C2", "0 Not present, 1 Always Off, 2 Solar Off, 3 Always On, 4 Auto"),
    ("stop_timer", "solar STOP timer, minutes 0-60 (0 = never stop)"),
    ("solar_start_current", "solar START, A summed over the phases, 0-48"),
    ("solar_max_import", "solar IMPORT, A summed over the phases, 0-20"),
    ("current_main", "MAINS, A per phase, 10-200 (the fallback rule must still hold)"),
    ("current_max", "MAX of this charger, A per phase, 10-80 (not below MIN, its user limit or override)"),
    ("current_max_circuit", "CIRCUIT: the limit of this charger's circuit, A per phase, 10-200"),
    ("starttime", "delayed charging: start at YYYY-MM-DDTHH:MM, local time (charging is off until then)"),
    ("stoptime", "stop at YYYY-MM-DDTHH:MM, local time, after starttime (only with starttime)"),
    ("repeat", "0 once, 1 daily (only with stoptime)"),
]
SETTINGS_NAMES = frozenset(n for n, _ in SETTINGS_PARAMS)
HARDWARE = "hardware setting of the SmartEVSE: evpilot has none to change"
# Every parameter is applied or refused by name, never silently dropped.
REFUSED = {
    "phases": HARDWARE,
    "cablelock": HARDWARE,
    "backlight": HARDWARE,
}
# Runtime.set_fuses names its settings; the firmware's parameter names for them.
FUSE_PARAMS = {
    "mains_limit": "current_main",
    "max_current": "current_max",
    "circuit_limit": "current_max_circuit",
}
SCHEDULE_FORMAT = "%Y-%m-%dT%H:%M"
UNKNOWN = "unknown parameter"
CURRENTS_PARAMS = [
    ("L1", "mains current L1 in dA (+ import); L1, L2 and L3 together"),
    ("L2", "mains current L2 in dA"),
    ("L3", "mains current L3 in dA"),
    ("battery_current", "home battery current in dA (+ charging, − discharging)"),
]
EV_METER_PARAMS = [
    ("L1", "EV current L1 in dA"),
    ("L2", "EV current L2 in dA"),
    ("L3", "EV current L3 in dA"),
    ("import_active_energy", "Wh"),
    ("export_active_energy", "Wh"),
    ("import_active_power", "W"),
]


def mount(app: FastAPI, rt: Runtime) -> None:
    """Serve the SmartEVSE API at the root (default charger) and under `/chargers/{id}/`."""

    def charger(cid: str) -> Charger:
        try:
            return rt.charger(cid)
        except UnknownCharger:
            raise refused({"charger": f"no charger {cid!r}"}, 404) from None

    def guarded(fn: Callable[[Request, str], Any]) -> Callable[[Request, str], Any]:
        async def run(request: Request, cid: str) -> Response:
            try:
                return await fn(request, cid)  # type: ignore[no-any-return]
            except Refusal as refusal:
                return firmware_body(refusal)

        run.__name__ = fn.__name__
        return run

    async def get_settings(request: Request, cid: str) -> Response:
        charger(cid)
        return json_response(settings_doc(rt, cid))

    async def post_settings(request: Request, cid: str) -> Response:
        ch = charger(cid)
        q = request.query_params
        errors: dict[str, Any] = {}
        done: dict[str, Any] = {}
        # In the order they apply: fuses, the charger's settings, MIN, site settings, the schedule.
        fuse_commands: list[cmd.Command] = []
        charger_commands: list[cmd.Command] = []
        site_commands: list[cmd.Command] = []
        solar: dict[str, float] = {}

        def number(name: str, low: int, high: int, off: int | None = None) -> int | None:
            if name not in q:
                return None
            value = _int(q[name])
            if value is None or not (low <= value <= high or value == off):
                errors[name] = NOT_ALLOWED
                return None
            return value

        def probe(name: str, commands: list[cmd.Command], into: list[cmd.Command]) -> bool:
            # The runtime's own check: a value it refuses is refused here, by the firmware's name.
            try:
                for command in commands:
                    rt.check(command)
            except CommandError:
                errors[name] = NOT_ALLOWED
                return False
            into.extend(commands)
            return True

        mode = rt.engine.mode_of(ch)
        if "mode" in q:
            mode_id = _int(q["mode"])
            chosen = vocab.MODE_BY_ID.get(mode_id) if mode_id is not None else None
            if chosen is None:
                errors["mode"] = NOT_ALLOWED
            else:
                mode = chosen.core_mode or mode
                probe("mode", vocab.mode_commands(cid, chosen), charger_commands)
                done["mode"] = q["mode"]
        if "override_current" in q:
            value = number("override_current", 0, 10 * round(ch.config.max_current))
            if value is not None:
                if mode not in ("normal", "smart"):
                    errors["override_current"] = NOT_ALLOWED
                else:
                    override: list[cmd.Command] = [cmd.SetOverride(cid, value / 10.0 or None)]
                    if probe("override_current", override, charger_commands):
                        done["override_current"] = value
        if "disable_override_current" in q:
            charger_commands.append(cmd.SetOverride(cid, None))
            done["disable_override_current"] = "OK"
        if "enable_C2" in q:
            c2 = number("enable_C2", 0, len(vocab.C2_PHASE_MODES) - 1)
            if c2 is not None:
                phase_mode = vocab.C2_PHASE_MODES[c2]
                if probe("enable_C2", [cmd.SetPhaseMode(cid, phase_mode)], charger_commands):
                    done.setdefault("settings", {})["enable_C2"] = vocab.C2_NAME[phase_mode]
        value = number("current_min", 6, 16)
        if value is not None and probe("current_min", [cmd.SetMinCurrent(value)], site_commands):
            done["current_min"] = value
        value = number("current_max_sum_mains", 10, 600, off=0)
        if value is not None:
            site_commands.append(cmd.SetCapacityLimit(float(value) or None))
            done["current_max_sum_mains"] = value
        value = number("max_sum_mains_timer", 0, 60)
        if value is not None:
            site_commands.append(cmd.SetCapStop(value * 60.0))
            done["max_sum_mains_time"] = value
        value = number("stop_timer", 0, 60)
        if "stop_timer" in errors:
            errors["stop_timer"] = False
        elif value is not None:
            solar["stop_min"] = float(value)
            done["stop_timer"] = True
        solar_params = (("solar_start_current", "start_current", 48), ("solar_max_import", "max_import", 20))
        for name, key, high in solar_params:
            value = number(name, 0, high)
            if value is not None:
                solar[key] = float(value)
                done[name] = value
        if solar:
            site_commands.append(cmd.SetSolar(**solar))
        # MAINS, MAX and CIRCUIT: ranges and the fallback rule are the runtime's (the config's) checks,
        # tried together first so that a refusal names the reason and changes nothing.
        fuses: dict[str, Any] = {}
        wanted = {n: _int(q[n]) for n in FUSE_PARAMS.values() if n in q}
        for name, value in wanted.items():
            if value is None:
                errors[name] = NOT_ALLOWED
        value = wanted.get("current_main")
        if value is not None:
            fuses["mains"] = done["current_main"] = value
        value = wanted.get("current_max")
        if value is not None:
            fuses["charger"], fuses["max_current"] = cid, value
            done["current_max"] = value
        value = wanted.get("current_max_circuit")
        home = rt.auto_balance.home(cid)
        if value is not None:
            if home is None:
                errors["current_max_circuit"] = (
                    f"charger {cid!r} is on no circuit: its CIRCUIT is MAINS (set current_main)"
                )
            else:
                fuses["circuit"], fuses["circuit_limit"] = home, value
                done["current_max_circuit"] = value
        if fuses and not any(n in errors for n in FUSE_PARAMS.values()):
            try:
                rt.check(cmd.SetFuses(**fuses))
                fuse_commands.append(cmd.SetFuses(**fuses))
            except CommandError as exc:
                for field in exc.field.split(","):
                    errors[FUSE_PARAMS.get(field, field)] = exc.message
        schedule = _schedule(rt, q, errors)
        for name in q:
            if name not in SETTINGS_NAMES:
                errors[name] = REFUSED.get(name, UNKNOWN)
        if errors:
            raise refused(errors)
        commands = fuse_commands + charger_commands + site_commands
        if schedule is not None:
            commands.append(cmd.SetSchedule(cid, schedule.start_at or 0.0, schedule.stop_at, schedule.repeat))
            done["starttime"] = round(schedule.start_at or 0)
            if "stoptime" in q:
                done["stoptime"] = round(schedule.stop_at or 0)
            if "repeat" in q:
                done["repeat"] = int(schedule.repeat)
        elif "mode" in q:
            # The firmware: a mode set without a starttime ends the wait for a delayed start.
            commands.append(cmd.ClearStart(cid))
        try:
            rt.apply(commands, ORIGIN)
        except CommandError as exc:
            raise refused({exc.field: exc.message}) from None
        return json_response(done)

    async def post_currents(request: Request, cid: str) -> Response:
        charger(cid)
        q = request.query_params
        errors: dict[str, Any] = {}
        phases = [name for name in ("L1", "L2", "L3") if name in q]
        values: dict[str, int] = {}
        for name in (*phases, "battery_current") if "battery_current" in q else phases:
            value = _int(q[name])
            bound = vocab.MAX_BATTERY_DA if name == "battery_current" else MAX_DECIAMPS
            if value is None or abs(value) > bound:
                errors[name] = NOT_ALLOWED
            else:
                values[name] = value
        if phases and len(phases) < 3:
            errors["TOTAL"] = "L1, L2 and L3 must be sent together"
        elif phases and rt.config.site.mains_meter != "api":
            errors["TOTAL"] = "MainsMeter is not API"
        if not phases and "battery_current" not in q:
            errors["TOTAL"] = "no L1, L2, L3 or battery_current"
        if errors:
            raise refused(errors)
        if phases:
            try:
                rt.api_meter.check((values["L1"] / 10.0, values["L2"] / 10.0, values["L3"] / 10.0))
            except ImplausibleReading as exc:
                raise refused({f"L{exc.phase + 1}": exc.message}) from None
        now = rt.clock.now()
        doc: dict[str, Any] = {}
        if "battery_current" in values:
            rt.engine.battery.push(vocab.battery_amps(values["battery_current"]), now)
            doc["battery_current"] = values["battery_current"]
            rt.recompute()
        if phases:
            dA = (values["L1"], values["L2"], values["L3"])
            rt.api_meter.push((dA[0] / 10.0, dA[1] / 10.0, dA[2] / 10.0), now)
            doc["original"] = {"L1": dA[0], "L2": dA[1], "L3": dA[2]}
            doc.update({"L1": dA[0], "L2": dA[1], "L3": dA[2], "TOTAL": sum(dA)})
        return json_response(doc)

    async def post_ev_meter(request: Request, cid: str) -> Response:
        charger(cid)
        q = request.query_params
        errors: dict[str, Any] = {}
        values: dict[str, int] = {}
        for name, _ in EV_METER_PARAMS:
            if name not in q:
                continue
            value = _int(q[name])
            limit = MAX_DECIAMPS if name in ("L1", "L2", "L3") else 10**9
            low = -MAX_DECIAMPS if name in ("L1", "L2", "L3") else 0
            if value is None or not low <= value <= limit:
                errors[name] = NOT_ALLOWED
            else:
                values[name] = value
        phases = [name for name in ("L1", "L2", "L3") if name in q]
        if phases and len(phases) < 3:
            errors["TOTAL"] = "L1, L2 and L3 must be sent together"
        if not values and not errors:
            errors["ev_meter"] = "no L1, L2, L3, import_active_energy or import_active_power"
        if errors:
            raise refused(errors)
        currents = None
        if phases:
            currents = (values["L1"] / 10.0, values["L2"] / 10.0, values["L3"] / 10.0)
        energy = values.get("import_active_energy")
        power = values.get("import_active_power")
        try:
            rt.ev_meters[cid].push(
                EvMeterReading(
                    currents=currents,
                    power_w=None if power is None else float(power),
                    energy_kwh=None if energy is None else energy / 1000.0,
                    taken_at=rt.clock.now(),
                )
            )
        except ImplausibleReading as exc:
            raise refused({"import_active_energy": exc.message}) from None
        return json_response({"ev_meter": values})

    routes = Routes(rt, "SmartEVSE")
    routes.add("GET", "/settings", guarded(get_settings), "State and settings (firmware JSON)")
    routes.add(
        "POST",
        "/settings",
        guarded(post_settings),
        "Change mode, override current and settings (query parameters)",
        openapi_extra=_query(SETTINGS_PARAMS),
    )
    routes.add(
        "POST",
        "/currents",
        guarded(post_currents),
        "Feed the API mains meter and the home battery current (dA)",
        openapi_extra=_query(CURRENTS_PARAMS),
    )
    routes.add(
        "POST",
        "/ev_meter",
        guarded(post_ev_meter),
        "Feed an API EV meter (refused: evpilot meters the EV itself)",
        openapi_extra=_query(EV_METER_PARAMS),
    )
    routes.mount(app)
    app.add_middleware(
        BodyLimit,
        pattern=rf"^{CHARGER_PREFIX}/(settings|currents|ev_meter)$",
        limit=MAX_BODY,
        refuse=lambda: json_response({"error": "Request too large"}, 413),
    )
