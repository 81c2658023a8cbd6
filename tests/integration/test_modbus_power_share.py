"""Power share across evpilot processes over loopback Modbus TCP (the SmartEVSE master/node case).

The primary (an API-fed mains meter, no simulator) drives the secondary's charger through the Teltonika
map; the secondary (its own simulated car) serves that map. A killed primary leaves the secondary at its
failsafe current once its watchdog runs out; a restarted primary takes control again; a mains overload
seen by the primary is answered on the secondary. The 2 s and watchdog bounds are the issue's contract,
measured in the secondary's clock between entries of its command log (`GET /api/commands`): a loaded
machine slows both processes alike and must not fail the test, a watchdog or an overload response that
takes twice the contract must. `bench/modbus.py --primary` prints the wall-clock overload figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pymodbus.client import ModbusTcpClient

from tests.helpers import evpilot_process, free_port

WATCHDOG_S = 3
FAILSAFE_A = 6
# The bound on answering a mains overload (clock seconds).
OVERLOAD_S = 2.0
# The primary polls every 0.5 s (wall).
POLL_S = 0.5
HOUSE_A = 5.0
# Both runtimes at twice real time: the secondary's watchdog counts in its clock (1.5 s of wall time).
SPEED = 2.0


def secondary(port: int) -> dict[str, Any]:
    return {
        "site": {"mains_limit": 63, "ramp_step": 32},
        "chargers": [{"id": "cp1", "max_current": 32}],
        "sim": {
            "cars": [{"charger": "cp1", "max_current": 16}],
            "house_base": [0, 0, 0],
            "first_spike_s": None,
        },
        "modbus": {"port": port, "allow_writes": True},
    }


def primary(port: int) -> dict[str, Any]:
    driver = {"type": "modbus", "host": "127.0.0.1", "port": port, "unit": 1}
    driver |= {"poll_s": POLL_S, "watchdog_s": WATCHDOG_S}
    return {
        "site": {"mains_limit": 40, "mains_meter": "api", "ramp_step": 32},
        "sim": {"enabled": False},
        "chargers": [{"id": "far", "safe_current": FAILSAFE_A, "driver": driver}],
    }


class Site:
    """The secondary's charger as its REST API shows it, and the primary's mains meter fed from it."""

    def __init__(self, secondary_url: str) -> None:
        self.sec = httpx.Client(base_url=secondary_url, timeout=5)
        self.primary: str | None = None
        self.house = HOUSE_A

    def charger(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.sec.get("/api/chargers/cp1").json()
        return doc

    def feed(self, doc: dict[str, Any]) -> None:
        if self.primary is None:
            return
        amps = self.house + max(doc["amperage"])
        with httpx.Client(base_url=self.primary, timeout=5) as c:
            c.put("/api/meters/mains", json={"currents": [amps, amps, amps]}).raise_for_status()

    def until(self, check: Callable[[dict[str, Any]], bool], within_s: float) -> tuple[float, dict[str, Any]]:
        """Feed the mains meter and poll the secondary until `check` holds; (seconds taken, document)."""
        start = time.monotonic()
        doc: dict[str, Any] = {}
        while time.monotonic() - start < within_s:
            doc = self.charger()
            if check(doc):
                return time.monotonic() - start, doc
            self.feed(doc)
            time.sleep(0.05)
        raise AssertionError(f"not within {within_s} s: {doc['current']} {doc['limits']['leases']}")

    def commands(self) -> list[dict[str, Any]]:
        """The secondary's command log, oldest first (`at` in its clock)."""
        log: list[dict[str, Any]] = self.sec.get("/api/commands", params={"limit": 200}).json()
        return log


def leases(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = doc["limits"]["leases"]
    return out


def controlled(doc: dict[str, Any]) -> bool:
    """The primary's lease is on and the car draws above the failsafe current."""
    return "modbus" in leases(doc) and "modbus_failsafe" not in leases(doc) and max(doc["amperage"]) > 10


def lease_set(entry: dict[str, Any], name: str) -> bool:
    """A command log entry of the Teltonika map setting lease `name`."""
    return (
        entry["origin"] == "modbus:teltonika"
        and entry["command"] == "set_lease"
        and entry["fields"]["name"] == name
        and entry["fields"]["amps"] is not None
    )


def test_primary_balances_a_secondary_which_falls_to_failsafe_without_it(tmp_path: Path) -> None:
    port = free_port()
    for name in ("s", "p1", "p2"):
        (tmp_path / name).mkdir()
    with evpilot_process(tmp_path / "s", secondary(port), SPEED) as (sec_url, _):
        site = Site(sec_url)
        with evpilot_process(tmp_path / "p1", primary(port), SPEED) as (pri_url, proc):
            site.primary = pri_url
            site.until(controlled, 60)
            proc.kill()
            proc.wait()
            site.primary = None
            # The last valid request is the test's own: amps to use (an entry of the command log, in the
            # secondary's clock); the watchdog counts from there. It also ends a failsafe already on.
            with ModbusTcpClient("127.0.0.1", port=port) as last:
                assert not last.write_register(15, 16, device_id=1).isError()
            _, doc = site.until(lambda d: "modbus_failsafe" in leases(d), 60)
            assert leases(doc) == {"modbus_failsafe": {"amps": FAILSAFE_A, "expires_in_s": None}}
            log = site.commands()
            heard = max(e["at"] for e in log if lease_set(e, "modbus"))
            tripped = max(e["at"] for e in log if lease_set(e, "modbus_failsafe"))
            # Not before the watchdog ran out, and not long after (clock seconds).
            assert WATCHDOG_S <= tripped - heard < 2 * WATCHDOG_S, (heard, tripped)
            site.until(
                lambda d: d["current"]["signaled"] <= FAILSAFE_A and max(d["amperage"]) <= FAILSAFE_A + 0.5,
                60,
            )
        with evpilot_process(tmp_path / "p2", primary(port), SPEED) as (pri_url, _):
            site.primary = pri_url
            # Valid communication ends the failsafe; the primary's lease lets the car draw again.
            site.until(controlled, 60)
            # The overload starts right after a mark in the secondary's log (a user limit at the
            # charger's MAX: no change to what it may draw); the primary's lowered lease comes after it.
            site.sec.put("/api/chargers/cp1/current_limit", json={"current": 32}).raise_for_status()
            site.house = 38.0
            site.feed(site.charger())
            site.until(lambda d: leases(d)["modbus"]["amps"] < 6 and d["current"]["signaled"] < 6, 60)
            log = site.commands()
            mark = max(e["at"] for e in log if e["command"] == "set_user_limit")
            down = min(
                e["at"] for e in log if lease_set(e, "modbus") and e["at"] >= mark and e["fields"]["amps"] < 6
            )
            assert down - mark < 2 * OVERLOAD_S, (mark, down)
