"""The driver registry: a meter or charger mapping's `type` names the factory that builds its driver.

Adding a driver is one entry here. Factories import their driver module when called, so a site
pays (in imports and start-up) only for the drivers its config names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evpilot.devices.base import ChargerLink
from evpilot.devices.meter import Clock, MeterDriver

if TYPE_CHECKING:
    from evpilot.config import AppConfig
    from evpilot.core.charger import ChargerConfig

# factory(meter name, the config mapping, clock) -> a driver whose `run` the runtime supervises.
MeterFactory = Callable[[str, Any, Clock], MeterDriver]


@dataclass(frozen=True, slots=True)
class LinkContext:
    """What a charger link factory may use: the clock, the simulator when it runs, MQTT, the OCPP backend."""

    clock: Clock
    sim: Any = None
    # The configured MQTT client settings (`mqtt:`), for drivers that talk over the site's broker.
    mqtt: Any = None
    # The OCPP backend (`ocpp_server:`) that `type: ocpp` wallboxes connect to.
    ocpp: Any = None


# factory(charger config, the config mapping, context) -> the charger's setpoint-level link.
LinkFactory = Callable[["ChargerConfig", Any, LinkContext], ChargerLink]

# HTTP meters answer within this unless the mapping sets timeout_s (seconds).
HTTP_TIMEOUT_S = 2.0


class DriverUnavailable(LookupError):
    """The config names a driver type that this installation has no factory for."""


def _homewizard(name: str, spec: Any, clock: Clock) -> MeterDriver:
    from evpilot.devices.homewizard import HomeWizardMeter

    timeout = spec.timeout_s or HTTP_TIMEOUT_S
    return HomeWizardMeter(name, spec.host, clock, spec.port, spec.poll_s, timeout)


def _shelly(name: str, spec: Any, clock: Clock) -> MeterDriver:
    from evpilot.devices.shelly_meter import ShellyMeter

    timeout = spec.timeout_s or HTTP_TIMEOUT_S
    return ShellyMeter(name, spec.host, clock, spec.port, spec.channel, spec.poll_s, timeout)


def _modbus(name: str, spec: Any, clock: Clock) -> MeterDriver:
    from evpilot.devices.modbus.driver import build

    return build(name, spec, clock)


def _simlink(charger: ChargerConfig, spec: Any, ctx: LinkContext) -> ChargerLink:
    if ctx.sim is None:
        raise DriverUnavailable(f"charger {charger.id!r}: driver simlink needs the simulator (sim.enabled)")
    from evpilot.devices.sim import SimLink

    return SimLink(charger.id, ctx.sim.pilots[charger.id])


def _esp32evse(charger: ChargerConfig, spec: Any, ctx: LinkContext) -> ChargerLink:
    from evpilot.devices.http_links import Esp32EvseLink

    timeout = spec.timeout_s or HTTP_TIMEOUT_S
    return Esp32EvseLink(
        charger.id, spec.host, ctx.clock, spec.port, spec.username, spec.password, spec.poll_s, timeout
    )


def _shelly_link(charger: ChargerConfig, spec: Any, ctx: LinkContext) -> ChargerLink:
    from evpilot.devices.http_links import ShellyTopAcLink

    timeout = spec.timeout_s or HTTP_TIMEOUT_S
    return ShellyTopAcLink(
        charger.id, spec.host, ctx.clock, spec.port, spec.password, spec.poll_s, timeout, spec.websocket
    )


def _smartevse(charger: ChargerConfig, spec: Any, ctx: LinkContext) -> ChargerLink:
    timeout = spec.timeout_s or HTTP_TIMEOUT_S
    if spec.host is None:
        from evpilot.config import parse_mqtt_url
        from evpilot.devices.http_links import SmartEvseMqttLink

        if ctx.mqtt is None or ctx.mqtt.url is None:
            raise DriverUnavailable(f"charger {charger.id!r}: the SmartEVSE MQTT driver needs mqtt.url")
        tls, host, port, user, password = parse_mqtt_url(ctx.mqtt.url)
        broker = (tls, host, port, ctx.mqtt.username or user, ctx.mqtt.password or password)
        return SmartEvseMqttLink(charger.id, spec.mqtt_prefix, broker, ctx.clock, spec.poll_s, timeout)
    from evpilot.devices.http_links import SmartEvseLink

    return SmartEvseLink(charger.id, spec.host, ctx.clock, spec.port, spec.poll_s, timeout)


def _ocpp(charger: ChargerConfig, spec: Any, ctx: LinkContext) -> ChargerLink:
    if ctx.ocpp is None:
        raise DriverUnavailable(f"charger {charger.id!r}: driver ocpp needs the OCPP backend (ocpp_server)")
    link: ChargerLink = ctx.ocpp.link(charger, spec.id, spec.connector, spec.password, spec.password_hash)
    return link


def _modbus_link(charger: ChargerConfig, spec: Any, ctx: LinkContext) -> ChargerLink:
    from evpilot.devices.modbus.charger import build

    return build(charger, spec, ctx.clock)


METER_DRIVERS: dict[str, MeterFactory] = {
    "modbus": _modbus,
    "homewizard": _homewizard,
    "shelly": _shelly,
}
LINK_DRIVERS: dict[str, LinkFactory] = {
    "simlink": _simlink,
    "esp32evse": _esp32evse,
    "shelly": _shelly_link,
    "smartevse": _smartevse,
    "ocpp": _ocpp,
    "modbus": _modbus_link,
}


def _missing(what: str, kind: str, known: dict[str, Any]) -> str:
    available = ", ".join(sorted(known)) or "none"
    return f"{what}: driver {kind!r} is not available in this installation (available: {available})"


def build_meter(name: str, spec: Any, clock: Clock) -> MeterDriver:
    """The driver for a meter mapping; DriverUnavailable when no factory is registered for its type."""
    factory = METER_DRIVERS.get(spec.type)
    if factory is None:
        raise DriverUnavailable(_missing(f"meter {name}", spec.type, METER_DRIVERS))
    return factory(name, spec, clock)


def build_link(charger: ChargerConfig, spec: Any, ctx: LinkContext) -> ChargerLink:
    """The link for a charger driver mapping; DriverUnavailable when no factory is registered."""
    factory = LINK_DRIVERS.get(spec.type)
    if factory is None:
        raise DriverUnavailable(_missing(f"charger {charger.id!r}", spec.type, LINK_DRIVERS))
    return factory(charger, spec, ctx)


def unavailable(config: AppConfig) -> list[tuple[str, str]]:
    """(config key, reason) for every meter or charger driver the config names but nothing provides."""
    from evpilot.config import MeterSpec

    problems: list[tuple[str, str]] = []
    for key, name, spec in config.meters():
        if isinstance(spec, MeterSpec) and spec.type not in METER_DRIVERS:
            problems.append((key, _missing(f"meter {name}", spec.type, METER_DRIVERS)))
    for i, ch in enumerate(config.chargers):
        kind = getattr(ch.driver, "type", None)
        if kind is not None and kind not in LINK_DRIVERS:
            problems.append((f"chargers.{i}.driver", _missing(f"charger {ch.id!r}", kind, LINK_DRIVERS)))
    return problems
