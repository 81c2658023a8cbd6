"""Teltonika TeltoCharge facade: the external-control register map (vocabulary) served over Modbus."""

from evpilot.api.teltonika.modbus import TeltonikaMap
from evpilot.api.teltonika.vocab import REGISTERS, Register

__all__ = ["REGISTERS", "Register", "TeltonikaMap"]
