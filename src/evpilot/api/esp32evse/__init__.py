"""ESP32-EVSE facade: the firmware's vocabulary, its REST API (`/api/v1/...`) and its MQTT bridge topics."""

from evpilot.api.esp32evse.rest import info_doc, mount, state_doc
from evpilot.api.esp32evse.vocab import tenths

__all__ = ["info_doc", "mount", "state_doc", "tenths"]
