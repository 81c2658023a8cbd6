"""The OCPP 1.6 configuration keys: access rules and value checks."""

from __future__ import annotations

from evpilot.api.ocpp.keys import KEYS, Change, Configuration, defaults


def make() -> tuple[Configuration, list[dict[str, str]]]:
    saved: list[dict[str, str]] = []
    return Configuration(defaults(2, 300, ["Energy.Active.Import.Register"], 60, 900), saved.append), saved


def test_every_key_has_a_value() -> None:
    config, _ = make()
    assert set(config.values) == set(KEYS)
    assert config.get("NumberOfConnectors") == "2"


def test_changes_follow_the_access_rules() -> None:
    config, saved = make()
    assert config.change("HeartbeatInterval", " 120 ") is Change.ACCEPTED
    assert config.number("HeartbeatInterval") == 120 and saved[-1]["HeartbeatInterval"] == "120"
    assert config.change("HeartbeatInterval", "0") is Change.REJECTED
    assert config.change("HeartbeatInterval", "often") is Change.REJECTED
    assert config.change("NumberOfConnectors", "3") is Change.REJECTED
    assert config.change("Foo", "1") is Change.NOT_SUPPORTED
    assert config.change("AuthorizationCacheEnabled", "TRUE") is Change.ACCEPTED
    assert config.flag("AuthorizationCacheEnabled")
    assert config.change("AuthorizationCacheEnabled", "yes") is Change.REJECTED
    assert config.change("WebSocketPingInterval", "30") is Change.REBOOT_REQUIRED
    assert len(saved) == 3


def test_measurand_lists() -> None:
    config, _ = make()
    assert config.change("MeterValuesSampledData", "Voltage, Current.Import") is Change.ACCEPTED
    assert config.csl("MeterValuesSampledData") == ["Voltage", "Current.Import"]
    assert config.change("MeterValuesSampledData", "Temperature") is Change.REJECTED
    assert config.change("StopTxnSampledData", "") is Change.ACCEPTED
    assert config.csl("StopTxnSampledData") == []


def test_get_configuration_reports_known_and_unknown_keys() -> None:
    config, _ = make()
    known, unknown = config.report(["HeartbeatInterval", "Nope"])
    assert known == [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}] and unknown == ["Nope"]
    everything, none = config.report(None)
    assert len(everything) == len(KEYS) and none == []
