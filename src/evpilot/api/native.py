"""evpilot's own REST API and WebSocket (`/api/...`)."""

from __future__ import annotations

import asyncio
import csv
import io
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from evpilot.api import secc
from evpilot.api.edge import Problem, Refusal
from evpilot.api.facade import JsonRoute
from evpilot.control.runtime import RECENT_COMMANDS, Runtime, session_dict
from evpilot.control.supervisor import OverallHealth
from evpilot.core import commands as cmd
from evpilot.core.access import LockState
from evpilot.core.charger import ErrorFlag, WorkState
from evpilot.core.errors import CommandError, check_range
from evpilot.core.iec61851 import PilotState
from evpilot.core.session import LimitReached
from evpilot.devices.apifed import ApiFedMeter
from evpilot.inputs import NumberError, parse_int

if TYPE_CHECKING:
    from evpilot.devices.ocpp_backend import OcppLink
    from evpilot.sim.site import SimSite

# The id tag a remote start without one carries (OCPP idToken: at most 20 characters).
REMOTE_ID_TAG = "evpilot"
OCPP_ID_TAG_MAX = 20
SIM_OFF = "the simulator is off (sim.enabled: false): /api/sim/ routes are not available"

# The origin of the commands this API sends (the log line's `origin=` and `GET /api/commands`).
ORIGIN = "rest:native"

# JSON arrays of exactly three numbers (L1, L2, L3); strict mode would refuse a tuple type.
Three = Annotated[list[float], Field(min_length=3, max_length=3)]


def _query_int(value: object) -> object:
    # Query text goes through the one number parser (pydantic alone would take `1_0`).
    if isinstance(value, str):
        try:
            return parse_int(value)
        except NumberError as exc:
            raise ValueError(str(exc)) from None
    return value


QueryInt = Annotated[int, BeforeValidator(_query_int)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class EnabledBody(_Body):
    """Allow or forbid charging."""

    enabled: bool


class CurrentLimitBody(_Body):
    """User current limit in A (6 to the charger's MAX, 0.1 A steps); null removes it."""

    # Checked against this charger's MAX by the charger, so the refusal names its own range.
    current: float | None = Field(json_schema_extra={"minimum": 6, "maximum": 80})


class CapsBody(_Body):
    """Session caps; omitted fields stay as they are, null or 0 removes a cap."""

    energy_kwh: float | None = Field(default=None, ge=0, le=1000)
    time_min: float | None = Field(default=None, ge=0, le=1440)


class AutoChargeBody(_Body):
    """Start on plug-in (true) or wait for an explicit start (false)."""

    auto_charge: bool


class ModeBody(_Body):
    """Charging mode; null follows the site's mode."""

    mode: str | None


class PhaseModeBody(_Body):
    """Second-contactor mode."""

    phase_mode: str


class StartBody(_Body):
    """Start charging, optionally for an id tag."""

    id_tag: str | None = Field(default=None, max_length=64)


class SolarBody(_Body):
    """Solar settings (START, STOP, IMPORT); a missing one stays as it is."""

    start_current: float | None = Field(default=None, description="START: surplus (A, sum of phases)")
    stop_min: float | None = Field(default=None, description="STOP timer (min), 0 = never stop")
    max_import: float | None = Field(default=None, description="IMPORT allowed (A, sum of phases)")


class ChargerSettingsBody(_Body):
    """A charger's MIN, MAX (A per phase) and priority; a missing one stays as it is."""

    min_current: float | None = None
    max_current: float | None = None
    priority: int | None = None


class SiteSettingsBody(_Body):
    """Site settings that can be changed at run time; a missing one stays as it is.

    Checked with the config file's ranges and cross checks; one refusal changes none of them.
    """

    mode: str | None = None
    mains_limit: float | None = Field(default=None, description="MAINS per-phase limit (A)")
    capacity_limit: float | None = Field(default=None, description="CAPACITY (A, sum); null removes it")
    circuits: dict[str, float] | None = Field(default=None, description="circuit name → limit (A per phase)")
    solar: SolarBody | None = None
    chargers: dict[str, ChargerSettingsBody] | None = Field(
        default=None, description="charger id → its MIN, MAX and priority"
    )


class MainsBody(_Body):
    """An API-fed mains meter reading: per-phase current in A (+ import, − export)."""

    currents: Three
    battery_current: float | None = Field(default=None, ge=-1000, le=1000)


class CircuitMeterBody(_Body):
    """An API-fed circuit meter reading: per-phase current in A."""

    currents: Three


class SiteLimitBody(_Body):
    """An external cap on the chargers' total current per phase; null amps removes it."""

    amps: float | None = Field(ge=0, le=600)
    source: Literal["user", "override", "lease"] = "user"
    timeout_s: float | None = Field(default=None, gt=0, le=86400, description="lease: lapses after this")


class RelayBody(_Body):
    """State of the grid operator's relay input (§14a EnWG)."""

    open: bool


class PlugBody(_Body):
    """A simulated car to plug in."""

    battery_kwh: float = Field(default=60, gt=0, le=300)
    soc: float = Field(default=30, ge=0, le=100)
    target_soc: float = Field(default=100, ge=0, le=100)
    max_current: float = Field(default=32, ge=6, le=80)
    phases: int = Field(default=3, ge=1, le=3, description="1 or 3")
    ventilation: bool = False


class HouseBody(_Body):
    """Fixed house load per phase in A; null returns to the daily profile."""

    currents: Three | None


class PvBody(_Body):
    """Fixed PV power in W; null returns to the daily curve."""

    power_w: float | None = Field(ge=0, le=1_000_000)


class AmbientBody(_Body):
    """Ambient temperature in °C."""

    temperature_c: float = Field(ge=-40, le=90)


class MeterOnlineBody(_Body):
    """Switch the simulated mains meter on or off (a dropout)."""

    online: bool


class FaultBody(_Body):
    """Simulated hardware faults."""

    rcm: bool = False
    diode: bool = False


# ---- response bodies (the native API's documents; field names are a public contract) -----------


class _Doc(BaseModel):
    # A response body: no field beyond these (the schema says additionalProperties: false).
    model_config = ConfigDict(extra="forbid")


class CurrentChainDoc(_Doc):
    """The current chain in A: allocated → available → commanded → signaled."""

    allocated: float
    available: float
    commanded: float
    signaled: float


class LeaseDoc(_Doc):
    """A leased limit: A, and seconds until it lapses (null: never)."""

    amps: float
    expires_in_s: float | None


class ProfileLimitDoc(_Doc):
    """The OCPP charging profile limit in force: A, and seconds until it next changes (null: never)."""

    amps: float
    next_change_in_s: float | None


class ChargerLimitsDoc(_Doc):
    """A charger's own limits in A; leases by source; the OCPP profile limit by `ocpp:<purpose>`."""

    max_current: float
    min_current: float
    cable: float | None
    user: float | None
    override: float | None
    leases: dict[str, LeaseDoc]
    profiles: dict[str, ProfileLimitDoc]


class CapsDoc(_Doc):
    """Session caps (null: none)."""

    energy_kwh: float | None
    time_min: float | None


class SessionDoc(_Doc):
    """The open session; times in clock seconds."""

    id: str
    started_at: float
    duration_s: float
    charging_s: float
    energy_kwh: float
    peak_power_w: float
    id_tag: str | None


class LinkDoc(_Doc):
    """A charger driven at setpoint level through a device driver: how its link is doing."""

    driver: str = Field(description="the driver's config type")
    address: str
    online: bool = Field(description="the last exchange with the device succeeded")
    last_seen_s: float | None = Field(description="seconds since the device last answered; null: never")
    errors: int = Field(description="failed exchanges so far")
    error_counts: dict[str, int] = Field(description="failed exchanges by kind")
    last_error: str | None
    commanded_a: float | None = Field(description="the last current written to the device (0: stopped)")
    assumed_a: float | None = Field(
        description="what it is assumed to draw: measured while online, the last command while silent"
    )


class OcppAnswerDoc(_Doc):
    """The OCPP call a command became, and the wallbox's answer (`Offline`: it could not be reached)."""

    action: str
    status: str
    detail: str | None = None


class LockAnswerDoc(_Doc):
    """What `POST unlock` did to a local charger's cable lock, in OCPP's words (Unlocked, UnlockFailed)."""

    action: Literal["force_unlock"]
    status: Literal["Unlocked", "UnlockFailed"]
    state: LockState = Field(description="the lock's state once answered")
    detail: str | None = Field(default=None, description="why it failed: the lock's fault, if any")


class OcppProfileDoc(_Doc):
    """The live charging profile the wallbox last acknowledged; times in clock seconds."""

    limit: float
    phases: int
    purpose: Literal["TxProfile", "TxDefaultProfile"]
    transaction_id: int | None
    sent_at: float
    valid_to: float


class OcppConnectorDoc(_Doc):
    """A wallbox connector: what it reported, and the charger it is (null: none)."""

    status: str | None
    error_code: str | None
    transaction_id: int | None
    id_tag: str | None
    charger: str | None
    profile: OcppProfileDoc | None = None
    last_status: str | None = Field(default=None, description="its answer to the last SetChargingProfile")
    pushes: int = Field(default=0, description="SetChargingProfile calls sent")
    failures: int = Field(default=0, description="of which refused or unanswered")
    failed_in_row: int = Field(default=0, description="deliveries refused or unanswered in a row")
    next_retry_in_s: float | None = Field(
        default=None, description="seconds until the next try after failures in a row (null: none pending)"
    )
    held_a: float | None = Field(
        default=None,
        description="the limit the wallbox may still apply when it has not taken the last one"
        " (the engine counts it at that); null: it follows",
    )


class OcppBootDoc(_Doc):
    """What the wallbox's BootNotification said."""

    charge_point_vendor: str
    charge_point_model: str
    charge_point_serial_number: str | None = None
    charge_box_serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    meter_type: str | None = None
    meter_serial_number: str | None = None


class OcppRefusedDoc(_Doc):
    """The last refused handshake under a station's identity: when (clock s), why and from where."""

    at: float
    reason: Literal["subprotocol", "no_credentials", "bad_credentials", "throttled"]
    client: str


class OcppStationDoc(_Doc):
    """An OCPP wallbox evpilot knows (configured, or an accepted unknown one); times in clock seconds."""

    id: str
    assigned: bool = Field(description="false: no charger names this identity")
    connected: bool
    booted: bool
    last_seen: float | None
    age_s: float | None
    boot: OcppBootDoc | None
    connectors: dict[str, OcppConnectorDoc]
    secured: bool = Field(default=False, description="it must prove its password (security profile 1/2)")
    refused: int = Field(default=0, description="handshakes under this identity refused")
    last_refused: OcppRefusedDoc | None = None


class ChargerDoc(_Doc):
    """One charger: pilot and work state, flags, mode, the current chain, measurements, limits, session."""

    id: str
    name: str
    state: PilotState
    work_state: WorkState
    plugged: bool
    charging: bool
    enabled: bool
    available: bool
    authorized: bool
    auto_charge: bool
    start_requested: bool
    mode: str = Field(description="the effective mode (the charger's own or the site's)")
    mode_setting: str | None = Field(description="the charger's own mode; null follows the site")
    phases: int = Field(description="phases in use")
    phase_mode: str
    current: CurrentChainDoc
    limit_source: str = Field(description="what bound the allocation")
    available_source: str
    amperage: Three
    voltage: Three
    power_w: float
    temperature: float
    limits: ChargerLimitsDoc
    caps: CapsDoc
    limit_reached: LimitReached | None
    errors: list[ErrorFlag]
    session: SessionDoc | None
    lifetime_kwh: float
    link: LinkDoc | None = Field(
        default=None,
        description="device drivers only (esp32evse, shelly, smartevse, simlink, ocpp); null for sim",
    )
    ocpp: OcppAnswerDoc | None = Field(
        default=None, description="commands to an OCPP charger: what its wallbox answered"
    )
    lock: LockAnswerDoc | None = Field(
        default=None, description="unlock of a charger with a cable lock: what the lock did"
    )


class ChargingDoc(_Doc):
    """Seed 002's momentary charging values (SECC `/api/v1/charging`), in the seed's names."""

    voltage: Three
    amperage: Three
    allocatedAmperage: float
    commandedAmperage: float
    availableAmperage: float
    signaledAmperage: float
    frequency: float
    energyImported: float
    lastActivePower: float


Triple = Annotated[list[float | None], Field(min_length=3, max_length=3)]


class MeterReadingDoc(_Doc):
    """A meter's last reading; null where the meter does not measure it."""

    taken_at: float
    age_s: float
    currents: Three
    voltages: Triple
    powers: Triple
    power: float | None
    import_kwh: float | None
    export_kwh: float | None
    frequency: float | None


class MainsDoc(_Doc):
    """The latest mains reading; the simulated meter adds its full report."""

    currents: Three
    age_s: float
    fresh: bool
    voltages: Triple | None = Field(default=None, description="a meter that measures it")
    powers: Triple | None = Field(default=None, description="a meter that measures it")
    power: float | None = Field(default=None, description="a meter driver that measures it")
    import_kwh: float | None = Field(default=None, description="a meter that measures it")
    export_kwh: float | None = Field(default=None, description="a meter that measures it")
    frequency: float | None = Field(default=None, description="a meter that measures it")


class SiteLimitDoc(_Doc):
    """An external cap on all chargers together (A per phase)."""

    amps: float
    expires_in_s: float | None


class OverloadDoc(_Doc):
    """Overload figures of one node."""

    events: int
    longest_s: float
    over_now: bool
    stalled: int


class SimDoc(_Doc):
    """The simulator's state."""

    time: float
    time_of_day_h: float
    pv_w: float
    house: Three
    battery_w: float
    ambient_c: float


class SiteDoc(_Doc):
    """The site: limits, mains, base load, available current, caps, overloads, simulator."""

    mode: str
    mains_limit: float
    capacity_limit: float | None
    mains: MainsDoc | None
    base_load: Three | None
    available: Three | None
    solar_surplus: float | None
    fallback: bool
    rejected_readings: dict[str, int]
    grid_relay_open: bool
    site_limits: dict[str, SiteLimitDoc]
    battery_current: float | None
    overloads: dict[str, OverloadDoc]
    chargers: list[str]
    meters: dict[str, MeterReadingDoc | None] = Field(description="last reading of every site meter, by name")
    sim: SimDoc | None = Field(default=None, description="only while the simulator runs")


class MeterDoc(_Doc):
    """One site meter: its driver, address, last reading and errors by kind."""

    name: str = Field(description="`mains`, `circuit:<name>` or `ev:<charger>`")
    driver: str
    model: str | None
    address: str
    online: bool
    reads: int
    reading: MeterReadingDoc | None
    errors: dict[str, int]
    last_error: str | None


class SessionRecordDoc(_Doc):
    """An ended session."""

    id: str
    charger_id: str
    started_at: float
    ended_at: float
    energy_kwh: float
    peak_power_w: float
    stop_reason: str
    id_tag: str | None
    auth_method: str | None


class CircuitDoc(_Doc):
    """A sub-distribution: its fuse per phase, its parent (null: mains) and the chargers on it."""

    name: str
    parent: str | None
    limit: float
    metered: bool
    chargers: list[str]


class SolarDoc(_Doc):
    """Solar settings: START, STOP and IMPORT."""

    start_current: float
    stop_min: float
    max_import: float


class ChargerSettingsDoc(_Doc):
    """A charger's MIN, MAX (A per phase) and priority."""

    min_current: float
    max_current: float
    priority: int


class SettingsDoc(_Doc):
    """Site settings."""

    mode: str
    mains_limit: float
    capacity_limit: float | None
    solar: SolarDoc
    chargers: dict[str, ChargerSettingsDoc]
    meter_timeout_s: float
    tick_s: float
    speed: float
    circuits: list[CircuitDoc] = Field(default_factory=list, description="the circuit tree, parents first")


class AcceptedDoc(_Doc):
    """A meter reading was taken at clock time `at`."""

    accepted: bool
    at: float


class SiteLimitSetDoc(_Doc):
    """The site limit as set."""

    source: Literal["user", "override", "lease"]
    amps: float | None
    timeout_s: float | None


class RelayDoc(_Doc):
    """The relay input as set."""

    open: bool


class HouseDoc(_Doc):
    """The fixed house load as set (null: the daily profile)."""

    currents: Three | None


class PvDoc(_Doc):
    """The fixed PV power as set (null: the daily curve)."""

    power_w: float | None


class AmbientDoc(_Doc):
    """The ambient temperature as set."""

    temperature_c: float


class MeterOnlineDoc(_Doc):
    """The simulated mains meter's state as set."""

    online: bool


class AppliedCommandDoc(_Doc):
    """One applied command: when (clock s), from which face, its kind and its fields."""

    at: float
    origin: str = Field(description="rest:native, ws, mqtt:native, mqtt:smartevse, rpc:shelly, ...")
    command: str = Field(description="the command's kind (set_enabled, set_lease, ...)")
    fields: dict[str, bool | float | str | list[str] | None] = Field(
        description="the command's fields by name (charger, amps, ...)"
    )


class TaskErrorDoc(_Doc):
    """A task's last unexpected exception; `at` in clock seconds."""

    type: str
    message: str
    at: float


class TaskHealthDoc(_Doc):
    """One supervised task."""

    name: str
    state: Literal["running", "restarting", "stopped", "failed"]
    restarts: int
    crashes: int
    last_error: TaskErrorDoc | None


class MqttLinkDoc(_Doc):
    """The MQTT bridge's link."""

    connected: bool
    connects: int
    accepted: int
    rejected: int
    suppressed: int = Field(description="refusals not published or logged (per-topic rate limit)")


class OcppServerHealthDoc(_Doc):
    """The OCPP backend: its port (null until it listens), wss or ws, refused handshakes by reason."""

    port: int | None
    tls: bool
    refused: dict[str, int] = Field(
        description="path, unknown_id, subprotocol, no_credentials, bad_credentials, throttled (absent: 0)"
    )


class HealthDoc(_Doc):
    """`ok` when every task runs and the MQTT link (if configured) is up, else `degraded`."""

    status: Literal["ok", "degraded"]
    tasks: list[TaskHealthDoc]
    mqtt: MqttLinkDoc | None
    ocpp_server: OcppServerHealthDoc | None = None


class HistoryDoc(_Doc):
    """Series sampled every `step` s from `from` to `to` (clock seconds); null where nothing was stored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: float = Field(alias="from")
    to: float
    step: int
    t: list[float] = Field(description="the start of each step, clock seconds")
    series: dict[str, list[float | None]] = Field(
        description="by name: mains_l1..3, mains_limit, capacity_limit, grid_w, pv_w, house_w, battery_w, "
        "charger:<id>:current|signaled|allocated|available"
    )


class SessionTotalDoc(_Doc):
    """Ended sessions of one day or month."""

    period: str = Field(description="YYYY-MM-DD or YYYY-MM (UTC)")
    sessions: int
    energy_kwh: float
    duration_s: float


class SessionTotalsDoc(_Doc):
    """Totals of the ended sessions that match the filters."""

    by: Literal["day", "month"]
    totals: list[SessionTotalDoc]
    sessions: int
    energy_kwh: float


SessionFilter = Annotated[str | None, Query(max_length=64)]
TimeQuery = Annotated[str | None, Query(max_length=40)]
HISTORY_MAX_POINTS = 10_000
HISTORY_MIN_STEP = 60


def parse_time(field: str, text: str) -> float:
    """Epoch seconds or ISO 8601 (UTC when it names no zone) as epoch seconds; CommandError if neither."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            raise CommandError(field, f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return t.timestamp()
    if not math.isfinite(value) or not 0 <= value <= 1e11:
        raise CommandError(field, f"{text!r} is out of range (epoch seconds, 0 to 1e11)")
    return value


def history_doc(
    rows: list[tuple[int, dict[str, Any]]], start: float, end: float, step: int
) -> dict[str, Any]:
    """Average the per-minute rows into steps of `step` s starting at `start`."""
    n = int((end - start) // step) + 1
    sums: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    for t, values in rows:
        i = int((t - start) // step)
        if not 0 <= i < n:
            continue
        for key, value in values.items():
            if key not in sums:
                sums[key], counts[key] = [0.0] * n, [0] * n
            sums[key][i] += value
            counts[key][i] += 1
    series = {
        key: [round(s / c, 3) if c else None for s, c in zip(sums[key], counts[key], strict=True)]
        for key in sorted(sums)
    }
    return {
        "from": start,
        "to": end,
        "step": step,
        "t": [start + i * step for i in range(n)],
        "series": series,
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _out(doc: Any) -> Response:
    """A response body as is (declared by the route's response model, checked by the tests)."""
    return JSONResponse(doc)


def build_router(rt: Runtime) -> APIRouter:
    """The native API bound to a runtime."""
    r = APIRouter(prefix="/api", route_class=JsonRoute)

    def doc(cid: str) -> dict[str, Any]:
        return rt.charger_doc(cid)

    def ocpp_link(cid: str) -> OcppLink | None:
        rt.charger(cid)  # UnknownCharger (404) first
        link = rt.links.get(cid)
        # By the config type: the OCPP module loads only on a site that has OCPP chargers.
        return cast("OcppLink", link) if link is not None and link.driver == "ocpp" else None

    async def relay(cid: str, action: str, send: Callable[[OcppLink], Awaitable[str]]) -> dict[str, Any]:
        """The charger's doc, with what its OCPP wallbox answered when it is one."""
        link = ocpp_link(cid)
        out = doc(cid)
        if link is not None:
            from evpilot.devices.ocpp_backend import OcppOffline

            try:
                out["ocpp"] = {"action": action, "status": await send(link)}
            except OcppOffline as exc:
                out["ocpp"] = {"action": action, "status": "Offline", "detail": str(exc)}
        return out

    @r.get(
        "/health",
        tags=["site"],
        summary="Supervised tasks: state, restarts, last error; MQTT link",
        response_model=HealthDoc,
    )
    async def get_health(request: Request) -> dict[str, Any]:
        sup = rt.supervisor
        bridge = getattr(request.app.state, "mqtt", None)
        mqtt: dict[str, Any] | None = None
        if bridge is not None:
            mqtt = {
                "connected": bridge.connected.is_set(),
                "connects": bridge.connects,
                "accepted": bridge.accepted,
                "rejected": bridge.rejected,
                "suppressed": bridge.suppressed,
            }
        status = sup.overall()
        if mqtt is not None and not mqtt["connected"]:
            status = OverallHealth.DEGRADED
        ocpp = None if rt.ocpp is None else rt.ocpp.health()
        return {"status": status.value, "tasks": sup.health(), "mqtt": mqtt, "ocpp_server": ocpp}

    @r.get(
        "/site",
        tags=["site"],
        summary="Site state: mains, base load, available current, PV",
        response_model=SiteDoc,
    )
    async def get_site() -> Response:
        return _out(rt.site_doc())

    @r.get("/chargers", tags=["chargers"], summary="All chargers", response_model=list[ChargerDoc])
    async def list_chargers() -> Response:
        return _out([doc(cid) for cid in rt.engine.chargers])

    @r.get(
        "/chargers/{cid}",
        tags=["chargers"],
        summary="One charger: state, currents, session, limits",
        response_model=ChargerDoc,
    )
    async def get_charger(cid: str) -> Response:
        return _out(doc(cid))

    @r.get(
        "/chargers/{cid}/charging",
        tags=["chargers"],
        summary="The SECC-style current chain",
        response_model=ChargingDoc,
    )
    async def get_charging(cid: str) -> Response:
        return _out(rt.charging_doc(cid))

    def apply(commands: cmd.Command | list[cmd.Command]) -> None:
        rt.apply(commands, ORIGIN)

    @r.post(
        "/chargers/{cid}/start",
        tags=["commands"],
        summary="Start charging (start_charging = true)",
        response_model=ChargerDoc,
    )
    async def start(cid: str, body: StartBody | None = None) -> Response:
        tag = body.id_tag if body is not None else None
        if ocpp_link(cid) is not None and tag is not None and len(tag) > OCPP_ID_TAG_MAX:
            raise CommandError("id_tag", f"an OCPP id tag has at most {OCPP_ID_TAG_MAX} characters")
        apply(cmd.Start(cid, tag))
        return _out(
            await relay(cid, "RemoteStartTransaction", lambda link: link.remote_start(tag or REMOTE_ID_TAG))
        )

    @r.post(
        "/chargers/{cid}/stop", tags=["commands"], summary="Stop (pause) charging", response_model=ChargerDoc
    )
    async def stop(cid: str) -> Response:
        apply(cmd.Stop(cid))
        return _out(await relay(cid, "RemoteStopTransaction", lambda link: link.remote_stop()))

    @r.put(
        "/chargers/{cid}/enabled",
        tags=["commands"],
        summary="Enable or disable charging",
        response_model=ChargerDoc,
    )
    async def put_enabled(cid: str, body: EnabledBody) -> Response:
        apply(cmd.SetEnabled(cid, body.enabled))
        return _out(await relay(cid, "ChangeAvailability", lambda link: link.set_available(body.enabled)))

    @r.post(
        "/chargers/{cid}/unlock",
        tags=["commands"],
        summary="Unlock the connector: force the cable lock open, or UnlockConnector to an OCPP wallbox",
        response_model=ChargerDoc,
    )
    async def unlock(cid: str) -> Response:
        if ocpp_link(cid) is not None:
            return _out(await relay(cid, "UnlockConnector", lambda link: link.unlock()))
        opened = await rt.access.force_unlock(cid, ORIGIN)
        if opened is None:
            problem = Problem(
                "charger", f"charger {cid!r} has no cable lock (lock: disabled) and is not an OCPP charger"
            )
            return Refusal(409, "not_supported", [problem]).response()
        lock = rt.access.of(cid).lock
        out = doc(cid)
        out["lock"] = {
            "action": "force_unlock",
            "status": "Unlocked" if opened else "UnlockFailed",
            "state": lock.state.value,
            "detail": None if opened else lock.fault or "not open within the lock's attempts",
        }
        return _out(out)

    @r.get(
        "/ocpp/stations",
        tags=["ocpp"],
        summary="OCPP wallboxes: connection, boot info, connectors",
        response_model=list[OcppStationDoc],
    )
    async def ocpp_stations() -> Response:
        return _out([] if rt.ocpp is None else rt.ocpp.doc())

    @r.put(
        "/chargers/{cid}/current_limit",
        tags=["commands"],
        summary="User current limit (A)",
        response_model=ChargerDoc,
    )
    async def put_limit(cid: str, body: CurrentLimitBody) -> Response:
        try:
            apply(cmd.SetUserLimit(cid, body.current))
        except CommandError as exc:
            raise CommandError("current", exc.message, exc.allowed) from None  # the body's field name
        return _out(doc(cid))

    @r.put(
        "/chargers/{cid}/caps",
        tags=["commands"],
        summary="Session energy and time caps",
        response_model=ChargerDoc,
    )
    async def put_caps(cid: str, body: CapsBody) -> Response:
        fields = body.model_fields_set
        commands: list[cmd.Command] = []
        if "energy_kwh" in fields:
            commands.append(cmd.SetEnergyCap(cid, body.energy_kwh or None))
        if "time_min" in fields:
            commands.append(cmd.SetTimeCap(cid, body.time_min or None))
        rt.charger(cid)
        apply(commands)
        return _out(doc(cid))

    @r.put(
        "/chargers/{cid}/auto_charge",
        tags=["commands"],
        summary="Start on plug-in or on command",
        response_model=ChargerDoc,
    )
    async def put_auto(cid: str, body: AutoChargeBody) -> Response:
        apply(cmd.SetAutoCharge(cid, body.auto_charge))
        return _out(doc(cid))

    @r.put(
        "/chargers/{cid}/mode",
        tags=["commands"],
        summary="Charging mode of one charger",
        response_model=ChargerDoc,
    )
    async def put_mode(cid: str, body: ModeBody) -> Response:
        apply(cmd.SetMode(cid, body.mode))
        return _out(doc(cid))

    @r.put(
        "/chargers/{cid}/phase_mode",
        tags=["commands"],
        summary="Second contactor (1/3-phase) mode",
        response_model=ChargerDoc,
    )
    async def put_phase_mode(cid: str, body: PhaseModeBody) -> Response:
        apply(cmd.SetPhaseMode(cid, body.phase_mode))
        return _out(doc(cid))

    @r.post(
        "/chargers/{cid}/reset", tags=["commands"], summary="Clear latched faults", response_model=ChargerDoc
    )
    async def reset(cid: str) -> Response:
        apply(cmd.ResetFaults(cid))
        return _out(doc(cid))

    @r.get(
        "/commands",
        tags=["commands"],
        summary="The commands applied lately, oldest first, with their origin",
        response_model=list[AppliedCommandDoc],
    )
    async def recent_commands(
        limit: Annotated[QueryInt, Query(ge=1, le=RECENT_COMMANDS)] = 50,
    ) -> Response:
        return _out(list(rt.recent_commands)[-limit:])

    @r.get(
        "/sessions",
        tags=["sessions"],
        summary="Ended sessions, newest first (filters: charger, card, from, to)",
        response_model=list[SessionRecordDoc],
    )
    async def sessions(
        charger: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[QueryInt, Query(ge=1, le=1000)] = 100,
        card: SessionFilter = None,
        start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    ) -> Response:
        if charger is not None:
            rt.charger(charger)
        lo, hi = _window(start, end, None)
        if rt.store is None:
            return _out([])
        # Off the event loop: the read waits for the store's queued writes.
        if card is None and lo is None and hi is None:
            found = await asyncio.to_thread(rt.store.sessions, charger, limit)
        else:
            found = await asyncio.to_thread(rt.store.sessions_between, charger, card, lo, hi, limit, True)
        return _out([session_dict(s) for s in found])

    def _window(
        start: str | None, end: str | None, default_span: float | None
    ) -> tuple[float | None, float | None]:
        lo = None if start is None else parse_time("from", start)
        hi = None if end is None else parse_time("to", end)
        if default_span is not None:
            hi = rt.clock.now() if hi is None else hi
            lo = hi - default_span if lo is None else lo
        if lo is not None and hi is not None and hi < lo:
            raise CommandError("to", "must not be before `from`")
        return lo, hi

    @r.get(
        "/history",
        tags=["site"],
        summary="Mains, PV, house, battery, grid and each charger's currents over time (per-minute store)",
        response_model=HistoryDoc,
        response_model_by_alias=True,
    )
    async def get_history(
        start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
        step: Annotated[QueryInt, Query(ge=HISTORY_MIN_STEP, le=31 * 86400)] = 300,
    ) -> Response:
        lo, hi = _window(start, end, 86400.0)
        assert lo is not None and hi is not None
        if (hi - lo) / step >= HISTORY_MAX_POINTS:
            raise CommandError(
                "step",
                f"({hi - lo:.0f} s / {step} s) is over {HISTORY_MAX_POINTS} points: choose a larger step",
            )
        rows = [] if rt.store is None else await asyncio.to_thread(rt.store.history, lo, hi)
        return _out(history_doc(rows, lo, hi, step))

    async def _filtered(
        charger: str | None, card: str | None, start: str | None, end: str | None
    ) -> list[Any]:
        if charger is not None:
            rt.charger(charger)
        lo, hi = _window(start, end, None)
        if rt.store is None:
            return []
        return await asyncio.to_thread(rt.store.sessions_between, charger, card, lo, hi)

    @r.get(
        "/sessions.csv",
        tags=["sessions"],
        summary="Ended sessions as CSV (filters: charger, card, from, to), oldest first",
        response_class=Response,
        responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    )
    async def sessions_csv(
        charger: SessionFilter = None,
        card: SessionFilter = None,
        start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    ) -> Response:
        records = await _filtered(charger, card, start, end)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(
            [
                "id",
                "charger_id",
                "card",
                "started_at",
                "ended_at",
                "duration_s",
                "energy_kwh",
                "peak_power_w",
                "stop_reason",
            ]
        )
        for rec in records:
            w.writerow(
                [
                    rec.id,
                    rec.charger_id,
                    rec.id_tag or "",
                    _iso(rec.started_at),
                    _iso(rec.ended_at),
                    round(rec.ended_at - rec.started_at, 1),
                    round(rec.energy_kwh, 3),
                    round(rec.peak_power_w, 1),
                    rec.stop_reason,
                ]
            )
        return Response(
            buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="sessions.csv"'},
        )

    @r.get(
        "/sessions/totals",
        tags=["sessions"],
        summary="Sessions and energy per day or month (UTC; filters: charger, card, from, to)",
        response_model=SessionTotalsDoc,
    )
    async def sessions_totals(
        charger: SessionFilter = None,
        card: SessionFilter = None,
        start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
        end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
        by: Literal["day", "month"] = "day",
    ) -> Response:
        records = await _filtered(charger, card, start, end)
        width = 10 if by == "day" else 7
        periods: dict[str, dict[str, Any]] = {}
        for rec in records:
            key = _iso(rec.started_at)[:width]
            p = periods.setdefault(key, {"period": key, "sessions": 0, "energy_kwh": 0.0, "duration_s": 0.0})
            p["sessions"] += 1
            p["energy_kwh"] += rec.energy_kwh
            p["duration_s"] += rec.ended_at - rec.started_at
        totals = [
            {**p, "energy_kwh": round(p["energy_kwh"], 3), "duration_s": round(p["duration_s"], 1)}
            for _, p in sorted(periods.items())
        ]
        return _out(
            {
                "by": by,
                "totals": totals,
                "sessions": len(records),
                "energy_kwh": round(sum(r.energy_kwh for r in records), 3),
            }
        )

    @r.get("/settings", tags=["settings"], summary="Site settings", response_model=SettingsDoc)
    async def get_settings() -> Response:
        s = rt.engine.site
        return _out(
            {
                "mode": s.mode,
                "mains_limit": s.mains_limit,
                "capacity_limit": s.capacity_limit,
                "solar": {
                    "start_current": s.solar.start_current,
                    "stop_min": s.solar.stop_min,
                    "max_import": s.solar.max_import,
                },
                "chargers": {
                    cid: {
                        "min_current": ch.config.min_current,
                        "max_current": ch.config.max_current,
                        "priority": ch.config.priority,
                    }
                    for cid, ch in rt.engine.chargers.items()
                },
                "meter_timeout_s": s.meter_timeout_s,
                "tick_s": rt.config.control.tick_s,
                "speed": rt.clock.speed,
                "circuits": [
                    {
                        "name": c.name,
                        "parent": c.parent,
                        "limit": c.limit,
                        "metered": c.metered,
                        "chargers": [
                            cid for cid, ch in rt.engine.chargers.items() if ch.config.circuit == c.name
                        ],
                    }
                    for c in s.circuits
                ],
            }
        )

    @r.put("/settings", tags=["settings"], summary="Change site settings", response_model=SettingsDoc)
    async def put_settings(body: SiteSettingsBody) -> Response:
        commands: list[cmd.Command] = []
        if body.mode is not None:
            commands.append(cmd.SetSiteMode(body.mode))
        if "capacity_limit" in body.model_fields_set:
            commands.append(cmd.SetCapacityLimit(body.capacity_limit))
        if body.solar is not None:
            commands.append(cmd.SetSolar(**body.solar.model_dump()))
        # Fuses go in as few SetFuses as they fit (MAINS, one circuit, one charger each), so values
        # that only pass together (a lower MAIN with a lower MAX) are checked together.
        circuits = list((body.circuits or {}).items())
        chargers = list((body.chargers or {}).items())
        for cid, _ in chargers:
            rt.charger(cid)
        for i in range(max(len(circuits), len(chargers), 1 if body.mains_limit is not None else 0)):
            fuse: dict[str, Any] = {"mains": body.mains_limit} if i == 0 else {}
            if i < len(circuits):
                fuse.update(circuit=circuits[i][0], circuit_limit=circuits[i][1])
            if i < len(chargers):
                fuse.update(charger=chargers[i][0], **chargers[i][1].model_dump())
            commands.append(cmd.SetFuses(**fuse))
        apply(commands)
        return await get_settings()

    @r.put(
        "/meters/mains",
        tags=["meters"],
        summary="Feed the API mains meter (A per phase)",
        response_model=AcceptedDoc,
    )
    async def put_mains(body: MainsBody) -> Response:
        for i, a in enumerate(body.currents):
            check_range(f"currents[{i}]", a, -1000, 1000, " A")
        currents = (body.currents[0], body.currents[1], body.currents[2])
        rt.api_meter.check(currents)  # an implausible reading is refused whole, battery included
        now = rt.clock.now()
        if body.battery_current is not None:
            rt.engine.battery.push(body.battery_current, now)
        rt.api_meter.push((body.currents[0], body.currents[1], body.currents[2]), now)
        return _out({"accepted": True, "at": now})

    @r.put(
        "/meters/circuits/{name}",
        tags=["meters"],
        summary="Feed a circuit's API meter (A per phase)",
        response_model=AcceptedDoc,
    )
    async def put_circuit(name: str, body: CircuitMeterBody) -> Response:
        meter = rt.engine.circuit_meters.get(name)
        if not isinstance(meter, ApiFedMeter):
            raise CommandError("name", f"circuit {name!r} has no API-fed meter (config: meter: api)")
        for i, a in enumerate(body.currents):
            check_range(f"currents[{i}]", a, -1000, 1000, " A")
        now = rt.clock.now()
        meter.push((body.currents[0], body.currents[1], body.currents[2]), now)
        return _out({"accepted": True, "at": now})

    @r.put(
        "/site/limit",
        tags=["site"],
        summary="External cap on all chargers together (A per phase)",
        response_model=SiteLimitSetDoc,
    )
    async def put_site_limit(body: SiteLimitBody) -> Response:
        now = rt.clock.now()
        expires = None if body.timeout_s is None else now + body.timeout_s
        apply(cmd.SetSiteCap(body.source, body.amps, expires))
        return _out({"source": body.source, "amps": body.amps, "timeout_s": body.timeout_s})

    @r.put(
        "/site/grid_relay",
        tags=["site"],
        summary="Grid operator relay input (open = 4.2 kW cap)",
        response_model=RelayDoc,
    )
    async def put_relay(body: RelayBody) -> Response:
        apply(cmd.SetGridRelay(body.open))
        return _out({"open": body.open})

    @r.get(
        "/meters",
        tags=["meters"],
        summary="Every site meter: driver, address, last reading, errors",
        response_model=list[MeterDoc],
    )
    async def get_meters() -> Response:
        return _out(rt.meters_doc())

    # ---- simulator -------------------------------------------------------------------------

    if rt.sim is None:
        # Matched before the routes below: without the simulator every /api/sim/ path is not found.
        @r.api_route(
            "/sim/{path:path}",
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            include_in_schema=False,
        )
        async def sim_off(path: str) -> JSONResponse:
            return JSONResponse({"error": "not_found", "detail": SIM_OFF}, status_code=404)

    def sim_site() -> SimSite:
        if rt.sim is None:
            raise CommandError("sim", "the simulator is not running")
        return rt.sim

    @r.post(
        "/sim/chargers/{cid}/plug",
        tags=["simulator"],
        summary="Plug a simulated car in",
        response_model=ChargerDoc,
    )
    async def sim_plug(cid: str, body: PlugBody | None = None) -> Response:
        sim_site()
        from evpilot.sim.ev import CarSpec

        b = body or PlugBody()
        if b.phases not in (1, 3):
            raise CommandError("phases", "must be 1 or 3")
        spec = CarSpec(b.battery_kwh, b.soc, b.max_current, b.phases, b.target_soc, b.ventilation)
        rt.sim_plug(cid, spec)
        return _out(doc(cid))

    @r.post(
        "/sim/chargers/{cid}/unplug",
        tags=["simulator"],
        summary="Unplug the simulated car",
        response_model=ChargerDoc,
    )
    async def sim_unplug(cid: str) -> Response:
        sim_site()
        rt.sim_unplug(cid)
        return _out(doc(cid))

    @r.post(
        "/sim/chargers/{cid}/fault",
        tags=["simulator"],
        summary="Raise or clear hardware faults",
        response_model=ChargerDoc,
    )
    async def sim_fault(cid: str, body: FaultBody) -> Response:
        sim = sim_site()
        rt.charger(cid)
        pilot = sim.pilots[cid]
        pilot.rcm_fault = body.rcm
        pilot.diode_fault = body.diode
        rt.recompute()
        return _out(doc(cid))

    @r.put(
        "/sim/house", tags=["simulator"], summary="Fix the house load per phase (A)", response_model=HouseDoc
    )
    async def sim_house(body: HouseBody) -> Response:
        sim = sim_site()
        if body.currents is not None:
            for i, a in enumerate(body.currents):
                check_range(f"currents[{i}]", a, 0, 400, " A")
        c = body.currents
        sim.house.override = None if c is None else (c[0], c[1], c[2])
        rt.recompute()
        return _out({"currents": body.currents})

    @r.put("/sim/pv", tags=["simulator"], summary="Fix the PV power (W)", response_model=PvDoc)
    async def sim_pv(body: PvBody) -> Response:
        sim = sim_site()
        sim.pv.override = body.power_w
        rt.recompute()
        return _out({"power_w": body.power_w})

    @r.put(
        "/sim/ambient",
        tags=["simulator"],
        summary="Set the ambient temperature (°C)",
        response_model=AmbientDoc,
    )
    async def sim_ambient(body: AmbientBody) -> Response:
        sim = sim_site()
        sim.params.ambient_c = body.temperature_c
        rt.recompute()
        return _out({"temperature_c": body.temperature_c})

    @r.put(
        "/sim/mains_meter",
        tags=["simulator"],
        summary="Take the simulated mains meter off/online",
        response_model=MeterOnlineDoc,
    )
    async def sim_meter(body: MeterOnlineBody) -> Response:
        sim_site()
        if rt.sim_meter is None:
            raise CommandError("mains_meter", "the mains meter is not the simulated one")
        rt.sim_meter.enabled = body.online
        return _out({"online": body.online})

    @r.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        # Every published frame; takes the SECC text commands for the default charger.
        await secc.run_socket(socket, rt, rt.default_id)

    return r
