"""SECC local API facade: its documents and leases, REST (`/api/v1/...`) and the WebSocket `/api/ws`."""

from evpilot.api.secc.rest import mount
from evpilot.api.secc.ws import run_socket

__all__ = ["mount", "run_socket"]
