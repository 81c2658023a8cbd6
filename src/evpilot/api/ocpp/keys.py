"""The OCPP 1.6 configuration keys evpilot supports, with their access rules and checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from evpilot.config import OCPP_MEASURANDS
from evpilot.core.profiles import MAX_PERIODS, MAX_STACK_LEVEL

MAX_PROFILES = 20
LOCAL_LIST_MAX = 1000
GET_CONFIGURATION_MAX_KEYS = 100


class Change(StrEnum):
    """ChangeConfiguration's answer."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    REBOOT_REQUIRED = "RebootRequired"
    NOT_SUPPORTED = "NotSupported"


def _int(low: int, high: int) -> Callable[[str], str]:
    def check(text: str) -> str:
        value = int(text.strip())
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return str(value)

    return check


def _bool(text: str) -> str:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value


def _measurands(text: str) -> str:
    items = [m.strip() for m in text.split(",") if m.strip()]
    for m in items:
        if m.split(".L")[0] not in OCPP_MEASURANDS:
            raise ValueError(f"{m} is not supported")
    return ",".join(items)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: read-only or writable (with its check), and whether a change needs a reboot."""

    readonly: bool
    check: Callable[[str], str] | None = None
    reboot: bool = False


KEYS: dict[str, Key] = {
    # Core
    "AllowOfflineTxForUnknownId": Key(False, _bool),
    "AuthorizationCacheEnabled": Key(False, _bool),
    "AuthorizeRemoteTxRequests": Key(False, _bool),
    "ClockAlignedDataInterval": Key(False, _int(0, 86_400)),
    "ConnectionTimeOut": Key(False, _int(0, 3600)),
    "GetConfigurationMaxKeys": Key(True),
    "HeartbeatInterval": Key(False, _int(1, 86_400)),
    "LocalAuthorizeOffline": Key(False, _bool),
    "LocalPreAuthorize": Key(False, _bool),
    "MeterValuesAlignedData": Key(False, _measurands),
    "MeterValuesSampledData": Key(False, _measurands),
    "MeterValuesSampledDataMaxLength": Key(True),
    "MeterValueSampleInterval": Key(False, _int(0, 86_400)),
    "NumberOfConnectors": Key(True),
    "ResetRetries": Key(False, _int(0, 10)),
    "ConnectorPhaseRotation": Key(True),
    "StopTransactionOnEVSideDisconnect": Key(True),
    "StopTransactionOnInvalidId": Key(False, _bool),
    "StopTxnAlignedData": Key(False, _measurands),
    "StopTxnSampledData": Key(False, _measurands),
    "SupportedFeatureProfiles": Key(True),
    "TransactionMessageAttempts": Key(False, _int(1, 100)),
    "TransactionMessageRetryInterval": Key(False, _int(0, 3600)),
    "UnlockConnectorOnEVSideDisconnect": Key(True),
    "WebSocketPingInterval": Key(False, _int(0, 3600), reboot=True),
    # Local authorization list management
    "LocalAuthListEnabled": Key(False, _bool),
    "LocalAuthListMaxLength": Key(True),
    "SendLocalListMaxLength": Key(True),
    # Smart charging
    "ChargeProfileMaxStackLevel": Key(True),
    "ChargingScheduleAllowedChargingRateUnit": Key(True),
    "ChargingScheduleMaxPeriods": Key(True),
    "MaxChargingProfilesInstalled": Key(True),
}


def defaults(
    connectors: int, heartbeat_s: int, measurands: list[str], sample_s: int, aligned_s: int
) -> dict[str, str]:
    """The keys' values at first start."""
    sampled = ",".join(measurands)
    return {
        "AllowOfflineTxForUnknownId": "true",
        "AuthorizationCacheEnabled": "true",
        "AuthorizeRemoteTxRequests": "false",
        "ClockAlignedDataInterval": str(aligned_s),
        "ConnectionTimeOut": "60",
        "GetConfigurationMaxKeys": str(GET_CONFIGURATION_MAX_KEYS),
        "HeartbeatInterval": str(heartbeat_s),
        "LocalAuthorizeOffline": "true",
        "LocalPreAuthorize": "false",
        "MeterValuesAlignedData": "Energy.Active.Import.Register",
        "MeterValuesSampledData": sampled,
        "MeterValuesSampledDataMaxLength": str(len(OCPP_MEASURANDS) + 6),
        "MeterValueSampleInterval": str(sample_s),
        "NumberOfConnectors": str(connectors),
        "ResetRetries": "1",
        "ConnectorPhaseRotation": ",".join(f"{n}.RST" for n in range(connectors + 1)),
        "StopTransactionOnEVSideDisconnect": "true",
        "StopTransactionOnInvalidId": "true",
        "StopTxnAlignedData": "",
        "StopTxnSampledData": "",
        "SupportedFeatureProfiles": "Core,LocalAuthListManagement,RemoteTrigger,SmartCharging",
        "TransactionMessageAttempts": "3",
        "TransactionMessageRetryInterval": "10",
        "UnlockConnectorOnEVSideDisconnect": "true",
        "WebSocketPingInterval": "0",
        "LocalAuthListEnabled": "true",
        "LocalAuthListMaxLength": str(LOCAL_LIST_MAX),
        "SendLocalListMaxLength": str(LOCAL_LIST_MAX),
        "ChargeProfileMaxStackLevel": str(MAX_STACK_LEVEL),
        "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
        "ChargingScheduleMaxPeriods": str(MAX_PERIODS),
        "MaxChargingProfilesInstalled": str(MAX_PROFILES),
    }


class Configuration:
    """The station's key values: read, changed by the access rules, and saved through `save`."""

    def __init__(self, values: dict[str, str], save: Callable[[dict[str, str]], None]) -> None:
        self.values = values
        self.save = save

    def get(self, key: str) -> str:
        """A key's value."""
        return self.values[key]

    def number(self, key: str) -> int:
        """A numeric key's value."""
        return int(self.values[key])

    def flag(self, key: str) -> bool:
        """A boolean key's value."""
        return self.values[key] == "true"

    def csl(self, key: str) -> list[str]:
        """A comma-separated key's items."""
        return [m for m in self.values[key].split(",") if m]

    def change(self, key: str, value: str) -> Change:
        """ChangeConfiguration: unknown → NotSupported, read-only or a bad value → Rejected."""
        spec = KEYS.get(key)
        if spec is None:
            return Change.NOT_SUPPORTED
        if spec.readonly or spec.check is None:
            return Change.REJECTED
        try:
            checked = spec.check(value)
        except ValueError:
            return Change.REJECTED
        self.values[key] = checked
        self.save(dict(self.values))
        return Change.REBOOT_REQUIRED if spec.reboot else Change.ACCEPTED

    def report(self, keys: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
        """GetConfiguration: the known keys asked for (all when none) and the unknown ones."""
        asked = keys if keys else list(KEYS)
        known = [
            {"key": k, "readonly": KEYS[k].readonly, "value": self.values[k]} for k in asked if k in KEYS
        ]
        return known, [k for k in asked if k not in KEYS]
