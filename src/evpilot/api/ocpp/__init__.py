"""OCPP: evpilot as a charge point (1.6J or 2.0.1) that a backend manages.

`station.py` holds a station's state, `link.py` its connection and timers,
`v16.py` and `v201.py` the two vocabularies, `keys.py` the 1.6 configuration keys.
"""

from __future__ import annotations

import logging

from evpilot.api.ocpp.link import Link
from evpilot.api.ocpp.station import Station
from evpilot.control.runtime import Runtime


class OcppService:
    """Every station of the `ocpp` config, each with its own link to the backend."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # The library logs every frame at INFO; evpilot's own log says what matters.
        logging.getLogger("ocpp").setLevel(logging.WARNING)
        config = rt.config.ocpp
        if config.stations:
            self.stations = [Station(rt, config, sid, {1: cid}) for cid, sid in config.stations.items()]
        else:
            connectors = {i + 1: c.id for i, c in enumerate(rt.config.chargers)}
            self.stations = [Station(rt, config, config.id, connectors)]
        self.links: list[Link] = [self._link(s) for s in self.stations]

    def _link(self, station: Station) -> Link:
        if self.rt.config.ocpp.version == "2.0.1":
            from evpilot.api.ocpp.v201 import Link201

            return Link201(station)
        from evpilot.api.ocpp.v16 import Link16

        return Link16(station)

    async def start(self) -> None:
        """Connect every station (in the background; an unreachable backend is retried)."""
        for link in self.links:
            await link.start()

    async def stop(self) -> None:
        """Disconnect; queued transaction messages stay in the store for the next run."""
        for link in self.links:
            await link.stop()
