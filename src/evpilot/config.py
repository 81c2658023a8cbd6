"""Typed configuration: one YAML file, validated with pydantic, with defaults for a sim home."""

from __future__ import annotations

import difflib
import json
import math
import re
import types
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from evpilot.core.charger import ChargerConfig
from evpilot.core.site import CircuitConfig, PhaseSwitchConfig, SiteConfig, SolarConfig
from evpilot.core.units import PhaseRotation
from evpilot.security import is_loopback_host

if TYPE_CHECKING:
    # The simulator is imported only where it runs (`sim.enabled: true`).
    from evpilot.sim.site import SimParams

Mode = Literal["off", "normal", "smart", "solar", "min+solar"]
HouseAmps = Annotated[float, Field(ge=0, le=400)]
PhaseMode = Literal["not_present", "always_1p", "always_3p", "solar_1p", "auto"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A host name or an IPv4/IPv6 address (no scheme, port or path: those have their own keys).
_HOST = r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$"
Host = Annotated[str, Field(min_length=1, max_length=253, pattern=_HOST)]
Port = Annotated[int, Field(ge=1, le=65535)]


class MeterSpec(_Model):
    """What every meter mapping takes besides its `type`."""

    type: str
    poll_s: float = Field(default=1, ge=0.05, le=3600, description="seconds between two reads")
    timeout_s: float | None = Field(
        default=None, gt=0, le=60, description="give up on one read after this (default: the driver's)"
    )


class HomeWizardMeterModel(MeterSpec):
    """A HomeWizard P1 (or kWh) meter through its local API v1 (`GET /api/v1/data`)."""

    type: Literal["homewizard"]
    host: Host
    port: Port = 80


class ShellyMeterModel(MeterSpec):
    """A Shelly Pro 3EM or EM (Gen2 RPC `EM.GetStatus` / `EM1.GetStatus`)."""

    type: Literal["shelly"]
    host: Host
    port: Port = 80
    channel: int = Field(default=0, ge=0, le=2, description="the EM's channel (Pro 3EM: 0)")


RegisterName = Literal[
    "current_l1",
    "current_l2",
    "current_l3",
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "power_l1",
    "power_l2",
    "power_l3",
    "power",
    "import_kwh",
    "export_kwh",
    "frequency",
]


class RegisterModel(_Model):
    """One value of a register map written in the config (`model: custom`)."""

    address: int = Field(ge=0, le=65535, description="register address (0-based, as on the wire)")
    function: Literal[3, 4] = Field(default=4, description="3 = holding, 4 = input registers")
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "float32"
    word_order: Literal["big", "little"] = Field(default="big", description="32-bit values: high word first?")
    scale: float = Field(default=1, description="multiply the raw value by this to get A, V, W, kWh or Hz")

    @model_validator(mode="after")
    def _scale(self) -> RegisterModel:
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise KeyedError("scale", "must be a finite number other than 0")
        return self


_SERIAL_KEYS = ("baudrate", "parity", "stopbits")


def _check_transport(host: str | None, serial: str | None, set_: set[str], kind: str) -> None:
    """A Modbus device is reached over TCP (host, port) or RTU (serial, ...), never both."""
    if (host is None) == (serial is None):
        raise KeyedError("host", "give either host (Modbus TCP) or serial (Modbus RTU), not both or neither")
    if host is not None:
        wrong = [k for k in _SERIAL_KEYS if k in set_]
        if wrong:
            raise KeyedError(wrong[0], f"{wrong[0]} is for a serial (RTU) {kind}; this one has a host")
    elif "port" in set_:
        raise KeyedError(
            "port", f"port is for a TCP {kind}; a serial (RTU) {kind} has baudrate, parity, stopbits"
        )


class ModbusMeterModel(MeterSpec):
    """A Modbus meter over TCP (`host`, `port`) or RTU (`serial`, `baudrate`, `parity`, `stopbits`)."""

    type: Literal["modbus"]
    model: str = Field(
        min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$", description="register map, or custom"
    )
    host: Host | None = None
    port: Port = 502
    serial: str | None = Field(default=None, min_length=1, max_length=256, description="serial device path")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit: int = Field(default=1, ge=1, le=247, description="Modbus unit (slave) id")
    registers: dict[RegisterName, RegisterModel] | None = None

    @model_validator(mode="after")
    def _transport(self) -> ModbusMeterModel:
        _check_transport(self.host, self.serial, self.model_fields_set, "meter")
        if self.model != "custom":
            from evpilot.devices.modbus.maps import lookup

            try:
                lookup(self.model)
            except KeyError as exc:
                raise KeyedError("model", str(exc.args[0])) from None
        if self.model == "custom":
            if not self.registers:
                raise KeyedError(
                    "registers", "model: custom needs a register map (registers: {current_l1: ...})"
                )
            if "current_l1" not in self.registers:
                raise KeyedError("registers", "the register map needs at least current_l1")
        elif self.registers is not None:
            raise KeyedError(
                "registers", f"registers are only for model: custom (model {self.model!r} has its own)"
            )
        return self

    @property
    def where(self) -> str:
        """The meter's address, for humans."""
        if self.host is not None:
            return f"{self.host}:{self.port} unit {self.unit}"
        return f"{self.serial} unit {self.unit}"


METER_MODELS: dict[str, type[MeterSpec]] = {
    "modbus": ModbusMeterModel,
    "homewizard": HomeWizardMeterModel,
    "shelly": ShellyMeterModel,
}
# Tag of a plain string value in the meter unions below.
_NAMED = "named"


def _meter_tag(value: Any) -> str | None:
    """Which branch of a meter setting a value is: a plain name, or the mapping's `type`."""
    if isinstance(value, str):
        return _NAMED
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if isinstance(kind, str) and kind in METER_MODELS else None
    if isinstance(value, MeterSpec):
        return value.type
    return None


def _meter_discriminator(names: str) -> Discriminator:
    """Picks a meter setting's branch; a refusal says which plain names and types the key takes."""
    return Discriminator(
        _meter_tag,
        custom_error_type="meter_setting",
        custom_error_message="not a meter setting",
        custom_error_context={"names": names},
    )


_Modbus = Annotated[ModbusMeterModel, Tag("modbus")]
_HomeWizard = Annotated[HomeWizardMeterModel, Tag("homewizard")]
_Shelly = Annotated[ShellyMeterModel, Tag("shelly")]
MainsMeter = Annotated[
    Annotated[Literal["sim", "api", "none"], Tag(_NAMED)] | _Modbus | _HomeWizard | _Shelly,
    _meter_discriminator("sim, api or none"),
]
CircuitMeter = Annotated[
    Annotated[Literal["none", "api"], Tag(_NAMED)] | _Modbus | _HomeWizard | _Shelly,
    _meter_discriminator("none or api"),
]
EvMeter = Annotated[
    Annotated[Literal["api"], Tag(_NAMED)] | _Modbus | _HomeWizard | _Shelly,
    _meter_discriminator("api"),
]


class SimLinkModel(_Model):
    """A simulated charger that runs its own pilot, driven at setpoint level (needs the simulator)."""

    type: Literal["simlink"]


class OcppDriverModel(_Model):
    """An OCPP 1.6J wallbox that connects to evpilot's backend (`ocpp_server`) with this identity."""

    type: Literal["ocpp"]
    id: str = Field(
        min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:-]+$", description="the charge point identity"
    )
    connector: int = Field(default=1, ge=1, le=16, description="the wallbox's connector this charger is")
    password: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        description="security profile 1/2: the wallbox's HTTP basic password (its AuthorizationKey)",
    )
    password_hash: str | None = Field(
        default=None,
        min_length=20,
        max_length=512,
        pattern=r"^\$argon2(id|i|d)\$",
        description="the same password as an argon2 hash (`evpilot auth hash`), kept out of the file",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> OcppDriverModel:
        if self.password is not None and self.password_hash is not None:
            raise KeyedError("password_hash", "give the station's password or its hash, not both")
        return self


class ModbusChargerModel(_Model):
    """A charger evpilot drives as its Modbus primary: TCP (`host`, `port`) or RTU (`serial`, ...)."""

    type: Literal["modbus"]
    map: Literal["teltonika", "esp32evse"] = Field(
        default="teltonika", description="the secondary's registers: teltonika (seed 003) or esp32evse"
    )
    host: Host | None = None
    port: Port = 502
    serial: str | None = Field(default=None, min_length=1, max_length=256, description="serial device path")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit: int = Field(default=1, ge=1, le=247, description="the secondary's Modbus unit (slave) id")
    poll_s: float = Field(default=1, ge=0.05, le=60, description="seconds between two polls")
    timeout_s: float = Field(default=1, gt=0, le=10, description="give up on one request after this")
    watchdog_s: int = Field(
        default=30,
        ge=1,
        le=600,
        description="teltonika: communication timeout written to register 19 (the failsafe current,"
        " register 20, is the charger's safe_current)",
    )

    @model_validator(mode="after")
    def _transport(self) -> ModbusChargerModel:
        _check_transport(self.host, self.serial, self.model_fields_set, "charger")
        set_ = self.model_fields_set
        if self.map == "esp32evse" and "watchdog_s" in set_:
            raise KeyedError(
                "watchdog_s",
                "the ESP32-EVSE registers have no communication watchdog (only map: teltonika has one)",
            )
        if self.map == "teltonika" and self.poll_s >= self.watchdog_s:
            raise KeyedError(
                "poll_s",
                f"{self.poll_s:g} s is not below watchdog_s ({self.watchdog_s} s): the secondary would"
                " fall to its failsafe current between two polls",
            )
        return self

    @property
    def where(self) -> tuple[str, int]:
        """The bus (endpoint or serial device) and unit, to find two chargers at one address."""
        bus = f"{self.host}:{self.port}" if self.host is not None else str(self.serial)
        return bus, self.unit


class LinkSpec(_Model):
    """What every networked charger driver takes besides its `type` and address."""

    poll_s: float = Field(default=1, ge=0.1, le=60, description="seconds between two reads of the charger")
    timeout_s: float | None = Field(
        default=None, gt=0, le=60, description="give up on one request after this (default: 2 s)"
    )


class Esp32EvseDriverModel(LinkSpec):
    """An ESP32-EVSE through its REST API (`/api/v1/state`), HTTP Basic auth when credentials are set."""

    type: Literal["esp32evse"]
    host: Host
    port: Port = 80
    username: str | None = Field(default=None, min_length=1, max_length=64)
    password: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _credentials(self) -> Esp32EvseDriverModel:
        if self.password is not None and self.username is None:
            raise KeyedError("username", "a password needs a username (HTTP Basic auth sends both)")
        return self


class ShellyDriverModel(LinkSpec):
    """A Shelly Top AC through Gen2 RPC; digest auth (SHA-256, user admin) when a password is set."""

    type: Literal["shelly"]
    host: Host
    port: Port = 80
    password: str | None = Field(default=None, min_length=1, max_length=64)
    websocket: bool = Field(
        default=True, description="take NotifyStatus over the /rpc WebSocket when it opens"
    )


class SmartEvseDriverModel(LinkSpec):
    """A SmartEVSE through its REST API (`host`) or its MQTT topics on the broker (`mqtt_prefix`)."""

    type: Literal["smartevse"]
    host: Host | None = None
    port: Port = 80
    mqtt_prefix: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[^#+\s]+$", description="e.g. SmartEVSE/1234"
    )

    @model_validator(mode="after")
    def _transport(self) -> SmartEvseDriverModel:
        if (self.host is None) == (self.mqtt_prefix is None):
            raise KeyedError("host", "set exactly one of host (REST) or mqtt_prefix (MQTT)")
        if self.mqtt_prefix is not None and self.mqtt_prefix.endswith("/"):
            raise KeyedError("mqtt_prefix", "no trailing '/': the topics are <prefix>/<Name>")
        return self


CHARGER_DRIVERS: dict[str, type[_Model]] = {
    "simlink": SimLinkModel,
    "esp32evse": Esp32EvseDriverModel,
    "shelly": ShellyDriverModel,
    "smartevse": SmartEvseDriverModel,
    "ocpp": OcppDriverModel,
    "modbus": ModbusChargerModel,
}
NetworkDriver = Esp32EvseDriverModel | ShellyDriverModel | SmartEvseDriverModel


def _driver_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return _NAMED
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if isinstance(kind, str) and kind in CHARGER_DRIVERS else None
    if isinstance(
        value,
        SimLinkModel
        | Esp32EvseDriverModel
        | ShellyDriverModel
        | SmartEvseDriverModel
        | OcppDriverModel
        | ModbusChargerModel,
    ):
        return value.type
    return None


ChargerDriver = Annotated[
    Annotated[Literal["sim"], Tag(_NAMED)]
    | Annotated[SimLinkModel, Tag("simlink")]
    | Annotated[Esp32EvseDriverModel, Tag("esp32evse")]
    | Annotated[ShellyDriverModel, Tag("shelly")]
    | Annotated[SmartEvseDriverModel, Tag("smartevse")]
    | Annotated[OcppDriverModel, Tag("ocpp")]
    | Annotated[ModbusChargerModel, Tag("modbus")],
    Discriminator(
        _driver_tag,
        custom_error_type="driver_setting",
        custom_error_message="not a charger driver setting",
        custom_error_context={"names": "sim"},
    ),
]


class CircuitModel(_Model):
    """A circuit (sub-distribution) with its per-phase fuse."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    limit: float = Field(ge=10, le=200, description="CIRCUIT per-phase limit (A)")
    parent: str | None = Field(default=None, description="parent circuit; none = directly on the mains")
    meter: CircuitMeter = Field(
        default="none", description="a meter on this circuit: none, fed through the API, or a meter mapping"
    )


class SolarModel(_Model):
    """Solar-mode settings (SmartEVSE START / STOP / IMPORT)."""

    start_current: float = Field(default=6, ge=0, le=48, description="START: surplus (A, sum of phases)")
    stop_min: float = Field(default=10, ge=0, le=60, description="STOP timer (min), 0 = never stop")
    max_import: float = Field(default=0, ge=0, le=20, description="IMPORT allowed (A, sum of phases)")
    start_grace_s: float = Field(default=40, ge=0, le=600)


class PhaseSwitchModel(_Model):
    """Automatic 1/3-phase switching timers."""

    down_hold_s: float = Field(default=30, ge=0, le=3600)
    up_hold_s: float = Field(default=60, ge=0, le=3600)
    min_interval_s: float = Field(default=300, ge=0, le=86400)
    margin: float = Field(default=1, ge=0, le=10)
    max_per_session: int = Field(
        default=4, ge=0, le=100, description="1/3-phase switches allowed per charging session"
    )


class SiteModel(_Model):
    """The grid connection and the site-wide settings."""

    mains_limit: float = Field(default=25, ge=10, le=200, description="MAINS per-phase limit (A)")
    capacity_limit: float | None = Field(default=None, ge=10, le=600, description="CAPACITY (A, sum)")
    cap_stop_min: float = Field(default=0, ge=0, le=60, description="CAP STOP grace (min)")
    mode: Mode = "smart"
    mains_meter: MainsMeter = Field(
        default="sim",
        description="where mains readings come from: the simulator, an API feed, none, or a meter mapping",
    )
    circuits: list[CircuitModel] = Field(default_factory=list)
    meter_timeout_s: float = Field(default=11, ge=1, le=600)
    fallback_current: float = Field(default=6, ge=0, le=80)
    exclude_self_current: bool = True
    solar: SolarModel = Field(default_factory=SolarModel)
    phase_switch: PhaseSwitchModel = Field(default_factory=PhaseSwitchModel)
    ramp_step: float = Field(default=6, ge=0.1, le=80)

    @model_validator(mode="after")
    def _tree(self) -> SiteModel:
        names = [c.name for c in self.circuits]
        if len(set(names)) != len(names):
            raise KeyedError("circuits", "circuit names must be unique")
        for i, c in enumerate(self.circuits):
            if c.parent is not None and c.parent not in names:
                raise KeyedError(f"circuits.{i}.parent", _unknown("parent circuit", c.parent, names))
        parent = {c.name: c.parent for c in self.circuits}
        for name in names:
            seen: set[str] = set()
            node: str | None = name
            while node is not None:
                if node in seen:
                    raise KeyedError("circuits", f"circuit {name!r}: the parent chain has a loop")
                seen.add(node)
                node = parent[node]
        return self


class ThingsBoardModel(_Model):
    """This charger as a ThingsBoard device over MQTT: telemetry every interval_s, RPC commands."""

    url: str = Field(description="the ThingsBoard MQTT broker, mqtt://host:1883 or mqtts://host:8883")
    token: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^\S+$",
        description="the device's access token (MQTT username)",
    )
    interval_s: float = Field(
        default=60, ge=1, le=86400, description="seconds between two telemetry messages"
    )

    @model_validator(mode="after")
    def _url(self) -> ThingsBoardModel:
        try:
            _tls, _host, _port, user, password = parse_mqtt_url(self.url)
        except ValueError as exc:
            raise KeyedError("url", str(exc)) from None
        if user is not None or password is not None:
            raise KeyedError("url", "no user or password in the URL: ThingsBoard takes the token as user")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class WindowModel(_Model):
    """A weekly charging window (local time): charging is allowed from `start` to `stop` on `days`."""

    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM")
    stop: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM (before start: next day)")
    days: list[Weekday] = Field(default_factory=lambda: list(get_args(Weekday)), min_length=1)


RfidSetting = Literal["disabled", "enable_all", "enable_one", "remote", "learn", "delete", "delete_all"]
SwitchSetting = Literal[
    "disabled",
    "access_button",
    "access_switch",
    "smart_solar_button",
    "smart_solar_switch",
    "grid_relay",
    "custom_button",
    "custom_switch",
]


class ChargerModel(_Model):
    """One charge point."""

    id: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = ""
    max_current: float = Field(default=32, ge=10, le=80, description="MAX (A)")
    min_current: float = Field(default=6, ge=6, le=16, description="MIN (A)")
    phases: Literal[1, 3] = 3
    phase: Literal[1, 2, 3] = Field(default=1, description="mains phase of a 1-phase charger")
    phase_rotation: Literal["L1L2L3", "L2L3L1", "L3L1L2"] | None = Field(
        default=None,
        description="3-phase charger: mains phases its L1, L2, L3 are wired to (default L1L2L3)",
    )
    circuit: str | None = None
    priority: int = Field(default=0, ge=0, le=9)
    safe_current: float = Field(default=6, ge=0, le=80, description="current when the lease lapses")
    max_temp: float = Field(default=65, ge=40, le=75, description="MAX TEMP (°C)")
    auto_charge: bool = True
    require_auth: bool = False
    mode: Mode | None = None
    contactor2: PhaseMode = "not_present"
    fixed_cable: bool = True
    rfid: RfidSetting = Field(default="disabled", description="RFID reader: who may start charging")
    switch: SwitchSetting = Field(default="disabled", description="what the switch input does")
    lock: Literal["disabled", "solenoid", "motor"] = Field(
        default="disabled", description="cable lock actuator (socket chargers: fixed_cable: false)"
    )
    schedules: list[WindowModel] = Field(
        default_factory=list, description="weekly windows when charging is allowed (none: always)"
    )
    authorization_timeout_s: float = Field(
        default=60, gt=0, le=3600, description="an authorization without a car lapses after this"
    )
    driver: ChargerDriver = Field(
        default="sim",
        description="sim (a pilot in the simulator) or a mapping such as {type: simlink} or"
        " {type: modbus, map: teltonika, host: ..., unit: ...}",
    )
    ev_meter: EvMeter = Field(
        default="api",
        description="api: the charger's own meter, replaced by API-fed values while fresh; or a mapping",
    )
    thingsboard: ThingsBoardModel | None = Field(
        default=None, description="publish this charger to ThingsBoard as its own device (its own token)"
    )

    @model_validator(mode="after")
    def _wiring(self) -> ChargerModel:
        if self.phases == 3 and "phase" in self.model_fields_set:
            raise KeyedError(
                "phase",
                f"charger {self.id!r}: 'phase' is for 1-phase chargers;"
                " a 3-phase charger uses phase_rotation",
            )
        if self.phases == 1 and self.phase_rotation is not None:
            raise KeyedError(
                "phase_rotation", f"charger {self.id!r}: a 1-phase charger names its mains phase with 'phase'"
            )
        if isinstance(self.driver, ModbusChargerModel) and self.driver.map == "teltonika":
            safe = self.safe_current
            if not (safe == 0 or (6 <= safe <= 32 and safe == int(safe))):
                raise KeyedError(
                    "safe_current",
                    f"charger {self.id!r}: {safe:g} A cannot be the Teltonika failsafe current"
                    " (register 20 takes 0 or whole amperes 6-32)",
                )
            if self.max_current > 32:
                raise KeyedError(
                    "max_current",
                    f"charger {self.id!r}: a Teltonika secondary takes at most 32 A"
                    " (amps to use, register 15)",
                )
        if self.lock != "disabled" and self.fixed_cable:
            raise KeyedError(
                "lock", f"charger {self.id!r}: a cable lock is for a socket charger (fixed_cable: false)"
            )
        teltonika = isinstance(self.driver, ModbusChargerModel) and self.driver.map == "teltonika"
        if self.lock != "disabled" and self.driver != "sim" and not teltonika:
            name: str = self.driver if isinstance(self.driver, str) else self.driver.type
            if isinstance(self.driver, ModbusChargerModel):
                name = f"modbus with map {self.driver.map}"
            raise KeyedError(
                "lock",
                f"charger {self.id!r}: driver {name} has no cable lock evpilot can drive; a lock works with"
                " driver: sim (the simulator's actuator) or {type: modbus, map: teltonika} (its lock"
                " register 18)",
            )
        return self

    def core(self) -> ChargerConfig:
        """The core's view of this charger."""
        return ChargerConfig(
            id=self.id,
            name=self.name or self.id,
            max_current=self.max_current,
            min_current=self.min_current,
            phases=self.phases,
            phase=self.phase,
            phase_rotation=PhaseRotation(self.phase_rotation or "L1L2L3"),
            circuit=self.circuit,
            priority=self.priority,
            safe_current=self.safe_current,
            max_temp=self.max_temp,
            # Resume at 55 °C, or 10 °C below a MAX TEMP set lower than 65 °C.
            resume_temp=min(55.0, self.max_temp - 10.0),
            auto_charge=self.auto_charge,
            # Any RFID mode but disabled: a car waits for a card (or an API authorization).
            require_auth=self.require_auth or self.rfid != "disabled",
            mode=self.mode,
            contactor2=self.contactor2,
            fixed_cable=self.fixed_cable,
        )


class CarModel(_Model):
    """A simulated car and when it plugs in."""

    charger: str
    at_s: float = Field(default=0, ge=0)
    unplug_at_s: float | None = Field(default=None, ge=0)
    battery_kwh: float = Field(default=60, gt=0, le=300)
    soc: float = Field(default=30, ge=0, le=100)
    target_soc: float = Field(default=100, ge=0, le=100)
    max_current: float = Field(default=32, ge=6, le=80)
    phases: Literal[1, 3] = 3
    ventilation: bool = False


class SimModel(_Model):
    """The built-in simulator."""

    enabled: bool = True
    seed: int = 1
    pv_kwp: float = Field(default=6, ge=0, le=1000)
    house_base: tuple[HouseAmps, HouseAmps, HouseAmps] = (1.5, 1.0, 1.2)
    spike_rate_h: float = Field(default=0.5, ge=0, le=60)
    first_spike_s: float | None = Field(default=300, ge=0)
    battery_kwh: float = Field(default=0, ge=0, le=10_000)
    battery_power_w: float = Field(default=0, ge=0, le=1_000_000)
    ambient_c: float = Field(default=25, ge=-40, le=90)
    start_tod_h: float | None = Field(
        default=10.0, ge=0, lt=24, description="simulated time of day at start (h); null = wall clock"
    )
    cars: list[CarModel] | None = None
    modbus_twins: bool = Field(
        default=False,
        description="serve the simulated mains meter as a Modbus TCP twin at the loopback address of"
        " site.mains_meter (a type: modbus mapping), so the site runs through real Modbus",
    )

    def params(self, charger_ids: list[str]) -> SimParams:
        """The simulator's parameters; by default one car plugs into the first charger at start."""
        from evpilot.sim.ev import CarSpec
        from evpilot.sim.site import PlannedCar, SimParams

        cars = self.cars
        if cars is None:
            cars = [CarModel(charger=charger_ids[0])] if charger_ids else []
        return SimParams(
            seed=self.seed,
            pv_kwp=self.pv_kwp,
            house_base=self.house_base,
            spike_rate_h=self.spike_rate_h,
            first_spike_at=self.first_spike_s,
            battery_kwh=self.battery_kwh,
            battery_power_w=self.battery_power_w,
            ambient_c=self.ambient_c,
            start_tod_s=None if self.start_tod_h is None else self.start_tod_h * 3600,
            cars=[
                PlannedCar(
                    charger=c.charger,
                    at=c.at_s,
                    unplug_at=c.unplug_at_s,
                    spec=CarSpec(
                        battery_kwh=c.battery_kwh,
                        soc=c.soc,
                        max_current=c.max_current,
                        phases=c.phases,
                        target_soc=c.target_soc,
                        ventilation=c.ventilation,
                    ),
                )
                for c in cars
            ],
        )


class Esp32EvseModel(_Model):
    """The ESP32-EVSE compatible REST API: optional HTTP Basic credentials."""

    username: str = Field(default="", max_length=64, description="empty user and password = no auth")
    password: str = Field(default="", max_length=64)


class ShellyModel(_Model):
    """The Shelly Gen2 RPC facade (Top AC) and its auto_balance meter."""

    password: str | None = Field(
        default=None, min_length=1, max_length=64, description="digest password of user admin; none = no auth"
    )
    device_id: str | None = Field(
        default=None, pattern=r"^[a-z0-9]+-[a-z0-9]{1,32}$", description="device id of the default charger"
    )
    mac: str | None = Field(default=None, pattern=r"^[0-9A-F]{12}$", description="MAC of the default charger")
    em_port: int = Field(default=80, ge=1, le=65535, description="HTTP port of the auto_balance Shelly EM")
    em_poll_s: float = Field(default=2.0, gt=0, le=60, description="auto_balance meter poll interval (s)")
    sim_em_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve a simulated Shelly Pro 3EM on 127.0.0.1:<port>"
    )


class ModbusModel(_Model):
    """The Modbus server facade (evpilot as a secondary a site controller or PLC drives)."""

    host: str = Field(default="127.0.0.1", description="address the Modbus TCP server listens on")
    port: int | None = Field(
        default=None, ge=0, le=65535, description="Modbus TCP port (502 is usual); none and no serial = off"
    )
    serial: str | None = Field(
        default=None,
        min_length=1,
        description="serial device for Modbus RTU (e.g. /dev/ttyUSB0) instead of TCP",
    )
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    map: Literal["teltonika", "esp32evse"] = Field(default="teltonika", description="the register map served")
    units: dict[str, int] = Field(
        default_factory=dict,
        description="charger id -> Modbus unit id 1-247 (default: the chargers in order from 1);"
        " chargers left out are not served",
    )
    allow_writes: bool = Field(default=False, description="accept register writes (else exception 01)")

    @model_validator(mode="after")
    def _check(self) -> ModbusModel:
        for cid, unit in self.units.items():
            if not 1 <= unit <= 247:
                raise ValueError(f"unit id of {cid!r} must be 1-247, got {unit}")
        if len(set(self.units.values())) != len(self.units):
            raise ValueError("Modbus unit ids must be unique")
        return self

    @property
    def enabled(self) -> bool:
        """A server is configured (a TCP port or a serial device)."""
        return self.port is not None or self.serial is not None


class ControlModel(_Model):
    """The runtime's timing."""

    tick_s: float = Field(default=1.0, gt=0, le=60)
    lease_ticks: float = Field(default=5, ge=1, le=100)


class TlsModel(_Model):
    """HTTPS (and WSS): a PEM certificate (chain) and its private key."""

    cert: Path = Field(description="PEM certificate file (with the chain, if any)")
    key: Path = Field(description="PEM private key file")


class OcppServerModel(_Model):
    """evpilot as the OCPP 1.6J backend (central system) its `type: ocpp` wallboxes connect to."""

    host: str = Field(default="0.0.0.0", min_length=1)
    port: int = Field(default=9000, ge=0, le=65535, description="0 = any free port")
    path: str = Field(
        default="/ocpp/", pattern=r"^/([A-Za-z0-9_.-]+/)*$", description="wallboxes connect to <path><id>"
    )
    accept_unknown: bool = Field(
        default=False, description="accept identities no charger names (listed as unassigned)"
    )
    heartbeat_s: int = Field(default=300, ge=10, le=86400, description="heartbeat interval given at boot")
    tls: TlsModel | None = Field(default=None, description="serve wss:// (security profile 2); none = ws://")
    allow_plain_auth: bool = Field(
        default=False,
        description="allow station passwords over plain ws:// on an address other machines reach",
    )


class HttpModel(_Model):
    """Where the HTTP API listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names this server may be reached by besides IP addresses, localhost and `host`"
        " (a Host allow-list against DNS rebinding); '*' allows any",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="web origins (scheme://host[:port]) allowed to change state or open WebSockets"
        " besides the server's own; '*' allows any",
    )
    tls: TlsModel | None = Field(default=None, description="serve HTTPS and WSS; none = plain HTTP")


class Role(StrEnum):
    """What an authenticated caller may do: viewers read, operators command chargers, admins all."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """viewer 0 < operator 1 < admin 2."""
        return _ROLE_RANK[self]

    def may(self, needed: Role) -> bool:
        """Whether this role includes `needed`."""
        return self.rank >= needed.rank


_ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class UserModel(_Model):
    """A user of the APIs: name, password hash (`evpilot auth hash`) and role."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^:\s]+$", description="no ':' or spaces")
    password_hash: str = Field(
        min_length=20, max_length=512, pattern=r"^\$argon2(id|i|d)\$", description="argon2 hash"
    )
    role: Role


class AuthModel(_Model):
    """Authentication of every HTTP API: users (HTTP basic, login) and API tokens (in the store)."""

    users: list[UserModel] = Field(default_factory=list, max_length=1000)
    session_ttl_s: float = Field(
        default=12 * 3600, gt=0, le=30 * 86400, description="a login token lapses this long after login"
    )

    @model_validator(mode="after")
    def _unique(self) -> AuthModel:
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise KeyedError("users", "user names must be unique")
        return self


_TOPIC_PREFIX = r"^[^+#/\x00][^+#\x00]{0,62}[^+#/\x00]$|^[^+#/\x00]$"


class SmartEvseMqttModel(_Model):
    """SmartEVSE-compatible MQTT topics (one SmartEVSE prefix per charger)."""

    enabled: bool = True
    prefix: str = Field(
        default="SmartEVSE/{serial}",
        description="topic prefix; {serial} = the charger's serial (older firmware: SmartEVSE-{serial})",
    )
    serials: dict[str, str] = Field(
        default_factory=dict, description="charger id -> serial (default: the charger id)"
    )

    @model_validator(mode="after")
    def _check(self) -> SmartEvseMqttModel:
        if "{serial}" not in self.prefix:
            raise ValueError("prefix must contain {serial}")
        for cid, serial in self.serials.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", serial):
                raise ValueError(f"serial of {cid!r} must be 1-32 of A-Z a-z 0-9 _ -")
        return self

    def topic(self, cid: str) -> str:
        """The SmartEVSE topic prefix of charger `cid`."""
        return self.prefix.replace("{serial}", self.serials.get(cid, cid))


class MqttModel(_Model):
    """The MQTT client: broker, topics, Home Assistant discovery and compatibility bridges."""

    url: str | None = Field(
        default=None, description="mqtt://[user[:password]@]host[:port] or mqtts://...; none = MQTT off"
    )
    username: str | None = Field(default=None, max_length=256)
    password: str | None = Field(default=None, max_length=256)
    client_id: str | None = Field(
        default=None, max_length=64, description="MQTT client id (default: evpilot-<topic prefix>)"
    )
    topic_prefix: str = Field(default="evpilot", pattern=_TOPIC_PREFIX)
    tls_ca: Path | None = Field(default=None, description="CA file for mqtts:// (default: system CAs)")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    refresh_s: float = Field(default=60, ge=1, le=3600, description="full republish period (s)")
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=30, gt=0, le=3600)
    discovery: bool = True
    discovery_prefix: str = Field(default="homeassistant", pattern=_TOPIC_PREFIX)
    smartevse: SmartEvseMqttModel = Field(default_factory=SmartEvseMqttModel)
    esp32evse: dict[str, str] = Field(
        default_factory=dict, description="charger id -> ESP32-EVSE bridge identifier (a-z, 0-9)"
    )

    @model_validator(mode="after")
    def _check(self) -> MqttModel:
        if self.url is not None:
            parse_mqtt_url(self.url)
        for cid, ident in list(self.esp32evse.items()):
            low = ident.lower()
            if not re.fullmatch(r"[a-z0-9]+", low):
                raise ValueError(
                    f"invalid ESP32-EVSE identifier {ident!r} for {cid!r}: use only a-z and 0-9"
                    " (no spaces, dashes, dots or other characters)"
                )
            self.esp32evse[cid] = low
        if len(set(self.esp32evse.values())) != len(self.esp32evse):
            raise ValueError("ESP32-EVSE identifiers must be unique")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s is above reconnect_max_s")
        return self


def parse_mqtt_url(url: str) -> tuple[bool, str, int, str | None, str | None]:
    """Split an MQTT URL into (tls, host, port, user, password); raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in MQTT URL {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in MQTT URL {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"MQTT URL {url!r} must not have a path, query or fragment")
    tls = parts.scheme == "mqtts"
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return tls, parts.hostname, port or (8883 if tls else 1883), user, password


class FallbackOverload(ValueError):
    """All chargers at their safe or fallback current would overload a fuse; one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class KeyedError(ValueError):
    """A check across fields that fails because of one key; `key` is relative to the model that raises it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _unknown(what: str, name: str, known: list[str]) -> str:
    """ "unknown WHAT 'name'" with the closest known name, or the known names when none is close."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {what} {name!r} (did you mean {close[0]!r}?)"
    return f"unknown {what} {name!r} (known: {', '.join(map(repr, known)) or 'none'})"


_PHASE_NAMES = ("L1", "L2", "L3")
_FALLBACK_KINDS = ("safe_current", "fallback_current")


def fallback_overloads(config: AppConfig) -> list[str]:
    """Where every charger at `safe_current`, or every one at `site.fallback_current`, exceeds a limit.

    A charger counts on each mains phase it can draw on (its phase map at 3 phases; its `phase` if
    1-phase), under the mains and every circuit it hangs from. It never draws more than its MAX, so a
    value above MAX counts as MAX. One message per node and value: the phase with the largest excess.
    """
    site = config.site
    parent = {c.name: c.parent for c in site.circuits}
    # Node order: the mains, then the circuits as configured; None stands for the mains.
    nodes: list[tuple[str | None, float]] = [(None, site.mains_limit)]
    nodes += [(c.name, c.limit) for c in site.circuits]
    sums = {(node, kind): [0.0, 0.0, 0.0] for node, _ in nodes for kind in _FALLBACK_KINDS}
    # The part of the safe_current sums that Modbus secondaries add (their failsafe current).
    secondaries = {node: [0.0, 0.0, 0.0] for node, _ in nodes}
    for ch in config.chargers:
        used = ch.core().phase_map.used(3)
        values = {
            "safe_current": min(failsafe_current(ch), ch.max_current),
            "fallback_current": min(site.fallback_current, ch.max_current),
        }
        secondary = isinstance(ch.driver, ModbusChargerModel)
        path: list[str | None] = [None]
        node = ch.circuit
        while node is not None:
            path.append(node)
            node = parent[node]
        for at in path:
            for kind, value in values.items():
                acc = sums[(at, kind)]
                for p in used:
                    acc[p] += value
            if secondary:
                for p in used:
                    secondaries[at][p] += values["safe_current"]
    problems = []
    for node, limit in nodes:
        where = "mains" if node is None else f"circuit {node!r}"
        for kind in _FALLBACK_KINDS:
            acc = sums[(node, kind)]
            worst = max(range(3), key=lambda p: acc[p])
            total = acc[worst]
            if total > limit + 1e-9:
                part = secondaries[node][worst] if kind == "safe_current" else 0.0
                of = f" (Modbus secondaries' failsafe current: {part:g} A)" if part else ""
                problems.append(
                    f"{where} {_PHASE_NAMES[worst]}: chargers' {kind} adds up to {total:g} A{of},"
                    f" above its {limit:g} A limit"
                )
    return problems


def failsafe_current(ch: ChargerModel) -> float:
    """What a charger draws at most once evpilot stops talking to it: its safe_current, which a
    Teltonika secondary gets as its failsafe current; an ESP32-EVSE secondary (no watchdog) keeps
    its last current, up to its MAX."""
    drv = ch.driver
    if isinstance(drv, ModbusChargerModel) and drv.map == "esp32evse":
        return ch.max_current
    return ch.safe_current


OCPP_MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "Current.Offered",
    "SoC",
)
_OCPP_ID = r"^[A-Za-z0-9._:*+|@-]{1,48}$"


class OcppModel(_Model):
    """evpilot as an OCPP charge point that a backend (CSMS) manages."""

    url: str | None = Field(
        default=None, description="ws://host:port/path/ or wss://...; the id is appended; none = OCPP off"
    )
    id: str = Field(default="EVPILOT-01", pattern=_OCPP_ID, description="charge point identity")
    version: Literal["1.6", "2.0.1"] = "1.6"
    password: str | None = Field(
        default=None, min_length=1, max_length=40, description="security profile 1/2: HTTP basic auth"
    )
    ca_file: Path | None = Field(default=None, description="CA file for wss:// (default: system CAs)")
    heartbeat_s: int = Field(default=300, ge=1, le=86_400)
    stations: dict[str, str] = Field(
        default_factory=dict,
        description="charger id -> station id: a station per charger (default: one, a connector each)",
    )
    measurands: list[str] = Field(
        default_factory=lambda: ["Energy.Active.Import.Register", "Power.Active.Import", "Current.Import"],
        description="MeterValuesSampledData at first start",
    )
    meter_sample_s: int = Field(
        default=60, ge=0, le=86_400, description="MeterValueSampleInterval at first start"
    )
    clock_aligned_s: int = Field(
        default=900, ge=0, le=86_400, description="ClockAlignedDataInterval at first start"
    )
    id_tag: str = Field(
        default="evpilot", min_length=1, max_length=20, description="idTag of a session without one"
    )
    vendor: str = Field(default="evpilot", min_length=1, max_length=20)
    model: str = Field(default="evpilot", min_length=1, max_length=20)
    response_timeout_s: float = Field(default=30, gt=0, le=300)
    reconnect_min_s: float = Field(default=1, gt=0, le=60)
    reconnect_max_s: float = Field(default=60, gt=0, le=3600)

    @model_validator(mode="after")
    def _check(self) -> OcppModel:
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise KeyedError("url", "must be ws://host[:port]/path/ or wss://...")
        for m in self.measurands:
            if m not in OCPP_MEASURANDS:
                raise KeyedError("measurands", f"{m!r} is not one of {', '.join(OCPP_MEASURANDS)}")
        for cid, sid in self.stations.items():
            if not re.fullmatch(_OCPP_ID[1:-1], sid):
                raise KeyedError(
                    "stations", f"station id of {cid!r} must be 1-48 of A-Z a-z 0-9 . _ - : * + | @"
                )
        if len(set(self.stations.values())) != len(self.stations):
            raise KeyedError("stations", "station ids must be unique")
        return self


class AppConfig(_Model):
    """The whole evpilot configuration file."""

    site: SiteModel = Field(default_factory=SiteModel)
    chargers: list[ChargerModel] = Field(default_factory=lambda: [ChargerModel(id="cp1", name="Garage")])
    sim: SimModel = Field(default_factory=SimModel)
    control: ControlModel = Field(default_factory=ControlModel)
    http: HttpModel = Field(default_factory=HttpModel)
    esp32evse: Esp32EvseModel = Field(default_factory=Esp32EvseModel)
    mqtt: MqttModel = Field(default_factory=MqttModel)
    shelly: ShellyModel = Field(default_factory=ShellyModel)
    ocpp: OcppModel = Field(default_factory=OcppModel)
    modbus: ModbusModel = Field(default_factory=ModbusModel)
    ocpp_server: OcppServerModel | None = Field(
        default=None, description="evpilot as the OCPP backend for `driver: {type: ocpp}` chargers"
    )
    auth: AuthModel | None = Field(default=None, description="none = no authentication (bind to loopback)")

    @model_validator(mode="after")
    def _refs(self) -> AppConfig:
        ids = [c.id for c in self.chargers]
        if len(set(ids)) != len(ids):
            raise KeyedError("chargers", "charger ids must be unique")
        for cid in self.ocpp.stations:
            if cid not in ids:
                raise KeyedError("ocpp.stations", _unknown("charger", cid, ids))
        circuits = [c.name for c in self.site.circuits]
        for i, c in enumerate(self.chargers):
            if c.circuit is not None and c.circuit not in circuits:
                raise KeyedError(f"chargers.{i}.circuit", _unknown("circuit", c.circuit, circuits))
            if c.min_current > c.max_current:
                raise KeyedError(
                    f"chargers.{i}.min_current", f"charger {c.id!r}: min_current is above max_current"
                )
        for i, car in enumerate(self.sim.cars or []):
            if car.charger not in ids:
                raise KeyedError(f"sim.cars.{i}.charger", _unknown("charger", car.charger, ids))
        mqtt = self.mqtt
        for where, table in (("esp32evse", mqtt.esp32evse), ("smartevse.serials", mqtt.smartevse.serials)):
            for cid in table:
                if cid not in ids:
                    raise KeyedError(f"mqtt.{where}", _unknown("charger", cid, ids))
        for cid in self.modbus.units:
            if cid not in ids:
                raise KeyedError("modbus.units", _unknown("charger", cid, ids))
        if self.mqtt.url is not None and "site" in ids:
            raise KeyedError("chargers", "mqtt: charger id 'site' is reserved for the site's topics")
        self._drivers()
        self._ocpp_stations()
        if self.site.mains_meter == "none":
            held = [c.id for c in self.chargers if (c.mode or self.site.mode) != "off"]
            if held:
                raise KeyedError(
                    "site.mains_meter",
                    f"none leaves charger(s) {', '.join(held)} at 0 A for good: without"
                    " mains readings every mode but off only holds a charger at or below what it had"
                    " (fallback_current never raises it from 0); use mains_meter: sim or api, or mode: off",
                )
        problems = fallback_overloads(self)
        if problems:
            raise FallbackOverload(problems)
        return self

    def meters(self) -> list[tuple[str, str, object]]:
        """Every meter setting: (config key, meter name, value)."""
        found: list[tuple[str, str, object]] = [("site.mains_meter", "mains", self.site.mains_meter)]
        for i, c in enumerate(self.site.circuits):
            found.append((f"site.circuits.{i}.meter", f"circuit:{c.name}", c.meter))
        for i, ch in enumerate(self.chargers):
            found.append((f"chargers.{i}.ev_meter", f"ev:{ch.id}", ch.ev_meter))
        return found

    def _ocpp_stations(self) -> None:
        """OCPP chargers need the backend, each (identity, connector) names one charger, the chargers of
        one station agree on its password, and a password does not cross a network in clear text."""
        seen: dict[tuple[str, int], str] = {}
        creds: dict[str, tuple[str, tuple[str | None, str | None]]] = {}
        for i, ch in enumerate(self.chargers):
            if not isinstance(ch.driver, OcppDriverModel):
                continue
            if self.ocpp_server is None:
                raise KeyedError(
                    f"chargers.{i}.driver",
                    f"charger {ch.id!r}: driver ocpp needs the OCPP backend: add ocpp_server: {{port: 9000}}",
                )
            key = (ch.driver.id, ch.driver.connector)
            if key in seen:
                raise KeyedError(
                    f"chargers.{i}.driver",
                    f"charger {ch.id!r}: OCPP station {key[0]!r} connector {key[1]} is already"
                    f" charger {seen[key]!r}",
                )
            seen[key] = ch.id
            secret = (ch.driver.password, ch.driver.password_hash)
            first = creds.setdefault(ch.driver.id, (ch.id, secret))
            if first[1] != secret:
                raise KeyedError(
                    f"chargers.{i}.driver",
                    f"charger {ch.id!r}: OCPP station {ch.driver.id!r} has other credentials on charger"
                    f" {first[0]!r}; every charger of one station names the same password (or none)",
                )
        server = self.ocpp_server
        with_secret = sorted(sid for sid, (_, secret) in creds.items() if secret != (None, None))
        if (
            server is not None
            and with_secret
            and server.tls is None
            and not server.allow_plain_auth
            and not is_loopback_host(server.host)
        ):
            raise KeyedError(
                "ocpp_server.tls",
                f"station {with_secret[0]!r} has a password, which plain ws:// on {server.host} would send"
                " readable to anyone on the network: add ocpp_server.tls {cert, key} (security profile 2),"
                " or set ocpp_server.allow_plain_auth: true for a network you trust (profile 1)",
            )

    def _drivers(self) -> None:
        """Drivers that need the simulator only with it; polls faster than readings go stale."""
        timeout = self.site.meter_timeout_s
        for key, _, meter in self.meters():
            if isinstance(meter, MeterSpec) and meter.poll_s >= timeout:
                raise KeyedError(
                    f"{key}.poll_s",
                    f"{meter.poll_s:g} s is not below site.meter_timeout_s ({timeout:g} s):"
                    " every reading would be stale before the next one",
                )
        for i, ch in enumerate(self.chargers):
            if isinstance(ch.driver, LinkSpec) and ch.driver.poll_s >= timeout:
                raise KeyedError(
                    f"chargers.{i}.driver.poll_s",
                    f"{ch.driver.poll_s:g} s is not below site.meter_timeout_s ({timeout:g} s):"
                    " every reading of the charger would be stale before the next one",
                )
            mqtt_driver = isinstance(ch.driver, SmartEvseDriverModel) and ch.driver.mqtt_prefix is not None
            if mqtt_driver and self.mqtt.url is None:
                raise KeyedError(
                    f"chargers.{i}.driver.mqtt_prefix",
                    f"charger {ch.id!r}: the SmartEVSE MQTT driver uses the configured broker,"
                    " and mqtt.url is not set",
                )
        seen: dict[tuple[str, int], str] = {}
        for i, ch in enumerate(self.chargers):
            drv = ch.driver
            if not isinstance(drv, ModbusChargerModel):
                continue
            if drv.poll_s >= timeout:
                raise KeyedError(
                    f"chargers.{i}.driver.poll_s",
                    f"{drv.poll_s:g} s is not below site.meter_timeout_s ({timeout:g} s):"
                    " every reading would be stale before the next one",
                )
            other = seen.setdefault(drv.where, ch.id)
            if other != ch.id:
                raise KeyedError(
                    f"chargers.{i}.driver.unit",
                    f"charger {ch.id!r}: unit {drv.unit} at {drv.where[0]} is charger {other!r} already",
                )
        if self.sim.modbus_twins:
            self._twins()
        if self.sim.enabled:
            return
        if self.site.mains_meter == "sim":
            raise KeyedError(
                "site.mains_meter",
                "sim needs the simulator, and sim.enabled is false: use api, none or a meter mapping"
                " such as {type: homewizard, host: ...}",
            )
        for i, ch in enumerate(self.chargers):
            if ch.driver == "sim" or isinstance(ch.driver, SimLinkModel):
                name = ch.driver if isinstance(ch.driver, str) else ch.driver.type
                raise KeyedError(
                    f"chargers.{i}.driver",
                    f"charger {ch.id!r}: driver {name} needs the simulator, and sim.enabled is false;"
                    " with the simulator off a charger needs a device driver such as"
                    " {type: esp32evse, host: ...}, {type: shelly, host: ...},"
                    " {type: smartevse, host: ...} or {type: modbus, map: teltonika, host: ...}",
                )
        if self.sim.cars:
            raise KeyedError("sim.cars", "simulated cars need the simulator, and sim.enabled is false")

    def _twins(self) -> None:
        """`sim.modbus_twins` serves the simulated mains meter where a loopback Modbus mapping reads it."""
        if not self.sim.enabled:
            raise KeyedError("sim.modbus_twins", "the twins follow the simulator, and sim.enabled is false")
        mains = self.site.mains_meter
        if not isinstance(mains, ModbusMeterModel) or mains.host is None:
            raise KeyedError(
                "sim.modbus_twins",
                "needs site.mains_meter as a Modbus TCP mapping ({type: modbus, model: ..., host: 127.0.0.1,"
                " port: ...}) for the twin to serve",
            )
        from evpilot.devices.modbus.net import is_loopback

        if not is_loopback(mains.host):
            raise KeyedError(
                "sim.modbus_twins",
                f"the twin listens on loopback only; site.mains_meter.host is {mains.host!r}"
                " (use 127.0.0.1, ::1 or localhost)",
            )

    def site_core(self) -> SiteConfig:
        """The core's view of the site."""
        s = self.site
        return SiteConfig(
            mains_limit=s.mains_limit,
            capacity_limit=s.capacity_limit,
            cap_stop_s=s.cap_stop_min * 60,
            mode=s.mode,
            circuits=tuple(
                CircuitConfig(c.name, c.limit, c.parent, metered=c.meter != "none") for c in s.circuits
            ),
            meter_timeout_s=s.meter_timeout_s,
            fallback_current=s.fallback_current,
            exclude_self_current=s.exclude_self_current,
            solar=SolarConfig(
                s.solar.start_current, s.solar.stop_min, s.solar.max_import, s.solar.start_grace_s
            ),
            phase_switch=PhaseSwitchConfig(
                s.phase_switch.down_hold_s,
                s.phase_switch.up_hold_s,
                s.phase_switch.min_interval_s,
                s.phase_switch.margin,
                max_per_session=s.phase_switch.max_per_session,
            ),
            ramp_step=s.ramp_step,
        )


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists (key, reason)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in errors))
        self.errors = errors


def parse_config(data: object) -> AppConfig:
    """Validate a parsed YAML document; raises ConfigError naming each bad key."""
    if data is None:
        data = {}
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for err in exc.errors():
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, FallbackOverload):
                errors.extend(("site", problem) for problem in cause.problems)
                continue
            loc = [str(p) for p in _without_tags(err["loc"])]
            if isinstance(cause, KeyedError):
                errors.append((".".join([*loc, cause.key]), cause.message))
                continue
            errors.append((".".join(loc) or "(root)", _readable(err)))
        raise ConfigError(errors) from None


_SETTING_KEYS = ("mains_meter", "meter", "ev_meter", "driver")


def _without_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """An error location without the union tags pydantic puts after a meter or driver key."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] in _SETTING_KEYS and part in (_NAMED, *METER_MODELS, *CHARGER_DRIVERS):
            continue
        out.append(part)
    return tuple(out)


def _setting_problem(kind: str, value: object, names: str) -> str:
    """Why a meter or charger driver setting is refused, in the file's words."""
    known = METER_MODELS if kind == "meter" else CHARGER_DRIVERS
    types_ = ", ".join(known)
    if isinstance(value, dict):
        given = value.get("type")
        if given is None:
            return f"a {kind} mapping needs a type: {types_}"
        return f"unknown {kind} type {given!r} (known: {types_})"
    return f"expected {names}, or a mapping with a type ({types_}); got {_kind(value)}"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config model a location points into (list indexes and dict keys step into their items)."""
    annotation: Any = AppConfig
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] in _SETTING_KEYS:
            tagged = {**METER_MODELS, **CHARGER_DRIVERS}.get(str(part))
            if tagged is not None:
                annotation = tagged
                continue
        annotation = _without_none(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
            continue
        # A list or a dict: step into its item type.
        args = get_args(annotation)
        if not args:
            return None
        annotation = args[-1]
    annotation = _without_none(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _without_none(annotation: Any) -> Any:
    """`X | None` as X."""
    while get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def _kind(value: object) -> str:
    """What a YAML value is, in the file's words."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "nothing" if value is None else type(value).__name__


def _readable(err: Any) -> str:
    """A pydantic error as a sentence about the file: no internal names, unknown keys with a suggestion."""
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        model = _model_at(tuple(err["loc"][:-1]))
        close = difflib.get_close_matches(key, list(model.model_fields) if model else [], n=1)
        return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind in ("meter_setting", "driver_setting"):
        return _setting_problem(kind.split("_")[0], value, err["ctx"]["names"])
    if kind == "literal_error" and len(err["loc"]) > 1 and err["loc"][-1] == _NAMED:
        what = "meter" if err["loc"][-2] != "driver" else "driver"
        return _setting_problem(what, value, err["ctx"]["expected"].replace("'", ""))
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == _HOST:
        return f"expected a host name or an IP address (no scheme, port or path), got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dataclass_type", "dict_type"):
        return f"expected a mapping of keys, got {_kind(value)}"
    if kind == "list_type":
        return f"expected a list, got {_kind(value)}"
    if kind == "value_error":
        cause = err.get("ctx", {}).get("error")
        return str(cause) if cause is not None else msg.removeprefix("Value error, ")
    # A backstop for messages not handled above: never show a class name from the code.
    msg = re.sub(r" or instance of \w+", "", msg)
    if isinstance(value, str | int | float | bool) and kind != "missing":
        msg += f", got {value!r}"
    return str(msg)


class DuplicateKey(Exception):
    """A YAML mapping names the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping with a repeated key (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping, after checking that no key repeats (keys merged in with `<<` may be overridden)."""
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            here = key_node.start_mark.line + 1
            if line is not None:
                raise DuplicateKey(f"duplicate key {key!r} on line {here} (first on line {line})")
            first_line[key] = here
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None) -> AppConfig:
    """Load and validate a YAML config file (None = the default simulated home)."""
    if path is None:
        return AppConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("(file)", str(exc))]) from None
    except UnicodeDecodeError as exc:
        reason = f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        raise ConfigError([("(file)", reason)]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as exc:
        raise ConfigError([("(yaml)", f"{path}: {exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("(yaml)", f"{path}: {_yaml_reason(exc)}")]) from None
    return parse_config(data)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """A YAML syntax error on one line: where, what, and where the enclosing construct starts."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return str(exc).replace('"<unicode string>", ', "")
    mark = exc.problem_mark
    reason = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if exc.context and exc.context_mark is not None:
        start = exc.context_mark
        reason += f" ({exc.context} that starts on line {start.line + 1}, column {start.column + 1})"
    if exc.problem and "block" in exc.problem:
        reason += "; check the indentation"
    return reason


def json_schema() -> str:
    """The JSON schema of the config file."""
    return json.dumps(AppConfig.model_json_schema(), indent=2)


def field_bounds(model: type[BaseModel], name: str) -> tuple[float, float]:
    """The (ge, le) range a config model allows for a numeric field: the one source of its limits."""
    low = high = None
    for rule in model.model_fields[name].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    if low is None or high is None:
        raise LookupError(f"{model.__name__}.{name} has no ge/le range")
    return float(low), float(high)


def with_fuses(
    config: AppConfig,
    mains_limit: float,
    circuit_limits: dict[str, float],
    charger_currents: dict[str, tuple[float, float]],
) -> AppConfig:
    """`config` with these MAINS, circuit limits and (MIN, MAX) per charger, validated as a config file is.

    Raises ConfigError: the same ranges and cross checks (MIN not above MAX, the fallback rule) as
    at start, so a value changed at run time can never be one the config file would refuse.
    """
    cfg = config.model_copy(deep=True)
    site = cfg.site
    site.mains_limit = mains_limit
    for circuit in site.circuits:
        circuit.limit = circuit_limits.get(circuit.name, circuit.limit)
    site.circuits = site.circuits
    for ch in cfg.chargers:
        if ch.id in charger_currents:
            ch.min_current, ch.max_current = charger_currents[ch.id]
    # Assigning marks a field as set, so the dump below keeps it (it leaves out defaults never
    # written, which keeps checks that look at what the file set, such as 'phase', as they were).
    cfg.site = site
    cfg.chargers = cfg.chargers
    return parse_config(cfg.model_dump(exclude_unset=True))
