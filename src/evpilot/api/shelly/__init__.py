"""Shelly Gen2 RPC facade of the Shelly Top AC charger: components, RPC, digest auth and transports."""

from evpilot.api.shelly.facade import ShellyFacade
from evpilot.api.shelly.transport import mount

__all__ = ["ShellyFacade", "mount"]
