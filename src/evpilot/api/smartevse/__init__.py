"""SmartEVSE-3 facade: the firmware's vocabulary, its REST API (`/settings`, ...) and its MQTT topics."""

from evpilot.api.smartevse.rest import mount, settings_doc

__all__ = ["mount", "settings_doc"]
