"""`evpilot meters scan` and `evpilot meters read`: the installer's tools for checking Modbus wiring."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, TextIO

# Only the register tables here: the parser is built on every `evpilot` command, pymodbus is loaded
# when a meters command runs.
from evpilot.devices.modbus.maps import MAPS, lookup

if TYPE_CHECKING:
    from evpilot.devices.modbus.bus import Endpoint
    from evpilot.devices.modbus.scan import Found


def unit_range(text: str) -> range:
    """`1-247` or `5`: a range of unit ids within 1-247."""
    lo, sep, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a unit id or a range like 1-247, got {text!r}") from None
    if not 1 <= first <= last <= 247:
        raise argparse.ArgumentTypeError(f"unit ids are 1-247 (first <= last), got {text!r}")
    return range(first, last + 1)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `meters scan` and `meters read` to the command line."""
    meters = sub.add_parser("meters", help="find and read Modbus meters (installer tools)")
    msub = meters.add_subparsers(dest="meters_cmd", required=True)
    scan_p = msub.add_parser("scan", help="probe unit ids on a Modbus TCP endpoint or RS485 port")
    read_p = msub.add_parser("read", help="print one decoded reading of a meter")
    for p in (scan_p, read_p):
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--host", help="Modbus TCP host (a meter or an RS485 gateway)")
        where.add_argument("--serial", metavar="DEVICE", help="serial port of an RS485 adapter (RTU)")
        p.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
        p.add_argument("--baudrate", type=int, default=9600, help="serial speed (default 9600)")
        p.add_argument("--parity", choices=["N", "E", "O"], default="N", help="serial parity (default N)")
        p.add_argument("--stopbits", type=int, choices=[1, 2], default=1, help="serial stop bits (default 1)")
    scan_p.add_argument(
        "--units", type=unit_range, default=range(1, 248), help="unit ids to probe (default 1-247)"
    )
    scan_p.add_argument(
        "--timeout", type=float, default=0.2, help="seconds to wait per request (default 0.2)"
    )
    read_p.add_argument("--model", required=True, help=f"register map: {', '.join(sorted(MAPS))}")
    read_p.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    read_p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait per request (default 1)")


def _endpoint(args: argparse.Namespace) -> Endpoint:
    from evpilot.devices.modbus.bus import Endpoint

    return Endpoint(args.host, args.port, args.serial, args.baudrate, args.parity, args.stopbits)


class _Progress:
    """A one-line progress bar on a terminal stream."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out = out
        self.width = width

    def __call__(self, done: int, total: int, unit: int, found: int) -> None:
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if done == total else ""
        self.out.write(f"\r[{bar}] {done}/{total} unit {unit:3d}, {found} found{end}")
        self.out.flush()


async def _scan(args: argparse.Namespace) -> list[Found]:
    from evpilot.devices.modbus import bus as buses
    from evpilot.devices.modbus.scan import scan

    bus = buses.acquire(_endpoint(args))
    try:
        found = await scan(bus, args.units, args.timeout, _Progress(sys.stderr))
    finally:
        buses.release(bus)
    return found


def _fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


async def _read(args: argparse.Namespace) -> int:
    from evpilot.devices.modbus import bus as buses
    from evpilot.devices.modbus.bus import BusError
    from evpilot.devices.modbus.driver import _absurd, _finite, read_values, to_reading

    regmap = lookup(args.model)
    bus = buses.acquire(_endpoint(args))
    try:
        values = await read_values(bus, regmap, args.unit, args.timeout)
    except BusError as exc:
        print(f"no reading: {exc.fault.value}: {exc}", file=sys.stderr)
        return 1
    finally:
        buses.release(bus)
    r = to_reading(regmap, values, time.time())
    print(f"{regmap.title} at {_endpoint(args)} unit {args.unit}")
    for n in range(regmap.phases):
        current, volts, power = (
            _fmt(r.currents[n], "A"),
            _fmt(r.voltages[n], "V", 1),
            _fmt(r.powers[n], "W", 0),
        )
        print(f"  L{n + 1}: {current}  {volts}  {power}")
    print(f"  power: {_fmt(r.power, 'W', 0)}  frequency: {_fmt(r.frequency, 'Hz')}")
    print(f"  import: {_fmt(r.import_kwh, 'kWh', 3)}  export: {_fmt(r.export_kwh, 'kWh', 3)}")
    problem = _finite(values) or _absurd(values)
    if problem:
        print(f"  implausible: {problem} (wrong model, unit id or word order?)", file=sys.stderr)
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    """Run `meters scan` or `meters read`."""
    if args.meters_cmd == "read":
        try:
            lookup(args.model)
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
        if not 1 <= args.unit <= 247:
            print(f"unit: expected 1-247, got {args.unit}", file=sys.stderr)
            return 2
    if not 1 <= args.port <= 65535:
        print(f"port: expected 1-65535, got {args.port}", file=sys.stderr)
        return 2
    if not 0.01 <= args.timeout <= 60:
        print(f"timeout: expected 0.01-60 s, got {args.timeout}", file=sys.stderr)
        return 2
    if args.meters_cmd == "read":
        return asyncio.run(_read(args))
    found = asyncio.run(_scan(args))
    if not found:
        print("no Modbus device answered", file=sys.stderr)
        return 1
    for hit in found:
        model = hit.model or "unknown"
        extra = f" (also fits: {', '.join(hit.candidates[1:])})" if len(hit.candidates) > 1 else ""
        print(f"unit {hit.unit}: {model} — {hit.how}{extra}")
    return 0
