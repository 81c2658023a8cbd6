"""`ocpp_server` and `driver: {type: ocpp}` in the config: defaults, and the refusals."""

from __future__ import annotations

from typing import Any

import pytest

from evpilot.config import ConfigError, OcppDriverModel, parse_config
from evpilot.control.build import assemble
from evpilot.devices.ocpp_backend import OcppLink

OFF: dict[str, Any] = {"sim": {"enabled": False}, "site": {"mains_meter": "api"}}
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"


def ocpp(cid: str, ident: str, connector: int | None = None, **secret: str) -> dict[str, Any]:
    driver: dict[str, Any] = {"type": "ocpp", "id": ident, **secret}
    if connector is not None:
        driver["connector"] = connector
    return {"id": cid, "driver": driver}


def errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


def test_defaults_and_links() -> None:
    cfg = parse_config(
        {**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB-1"), ocpp("b", "WB-1", 2), ocpp("c", "WB-2")]}
    )
    assert cfg.ocpp_server is not None
    s = cfg.ocpp_server
    assert (s.host, s.port, s.path, s.accept_unknown, s.heartbeat_s) == (
        "0.0.0.0",
        9000,
        "/ocpp/",
        False,
        300,
    )
    assert cfg.chargers[0].driver == OcppDriverModel(type="ocpp", id="WB-1", connector=1)
    parts = assemble(cfg, 0.0)
    assert parts.ocpp is not None and parts.sim is None
    links = parts.links
    assert all(isinstance(link, OcppLink) for link in links.values())
    assert [links[c].address for c in "abc"] == ["ocpp:WB-1/1", "ocpp:WB-1/2", "ocpp:WB-2/1"]
    assert sorted(parts.ocpp.stations) == ["WB-1", "WB-2"]
    assert sorted(parts.ocpp.stations["WB-1"].links) == [1, 2]
    assert parse_config({**OFF, "chargers": []}).ocpp_server is None


@pytest.mark.parametrize(
    ("data", "key", "start"),
    [
        ({**OFF, "chargers": [ocpp("a", "WB-1")]}, "chargers.0.driver", "charger 'a': driver ocpp needs"),
        (
            {**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB-1"), ocpp("b", "WB-1", 1)]},
            "chargers.1.driver",
            "charger 'b': OCPP station 'WB-1' connector 1 is already charger 'a'",
        ),
        (
            {**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB 1")]},
            "chargers.0.driver.id",
            "String should",
        ),
        ({**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB", 0)]}, "chargers.0.driver.connector", ""),
        ({**OFF, "ocpp_server": {"path": "ocpp"}, "chargers": []}, "ocpp_server.path", "String should"),
        ({**OFF, "ocpp_server": {"port": 70000}, "chargers": []}, "ocpp_server.port", ""),
        ({**OFF, "ocpp_server": {"heartbeat_s": 1}, "chargers": []}, "ocpp_server.heartbeat_s", ""),
        (
            {**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB-1", password="pw")]},
            "ocpp_server.tls",
            "station 'WB-1' has a password, which plain ws:// on 0.0.0.0 would send readable",
        ),
        (
            {**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB-1", password_hash=HASH)]},
            "ocpp_server.tls",
            "station 'WB-1' has a password",
        ),
        (
            {
                **OFF,
                "ocpp_server": {"host": "127.0.0.1"},
                "chargers": [ocpp("a", "WB-1", password="pw"), ocpp("b", "WB-1", 2, password="other")],
            },
            "chargers.1.driver",
            "charger 'b': OCPP station 'WB-1' has other credentials on charger 'a'",
        ),
        (
            {
                **OFF,
                "ocpp_server": {"host": "127.0.0.1"},
                "chargers": [ocpp("a", "WB-1", password="pw"), ocpp("b", "WB-1", 2)],
            },
            "chargers.1.driver",
            "charger 'b': OCPP station 'WB-1' has other credentials",
        ),
        (
            {**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB-1", password="pw", password_hash=HASH)]},
            "chargers.0.driver.password_hash",
            "give the station's password or its hash, not both",
        ),
        (
            {
                **OFF,
                "ocpp_server": {},
                "chargers": [ocpp("a", "WB-1", password_hash="not-a-hash-but-long-enough")],
            },
            "chargers.0.driver.password_hash",
            "String should",
        ),
        (
            {**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB-1", password="x" * 41)]},
            "chargers.0.driver.password",
            "",
        ),
    ],
)
def test_refusals(data: dict[str, Any], key: str, start: str) -> None:
    found = errors(data)
    assert any(k == key and msg.startswith(start) for k, msg in found), found


@pytest.mark.parametrize(
    "server",
    [
        {"host": "127.0.0.1"},
        {"host": "localhost"},
        {"host": "0.0.0.0", "allow_plain_auth": True},
        {"host": "0.0.0.0", "tls": {"cert": "/etc/evpilot/cert.pem", "key": "/etc/evpilot/key.pem"}},
    ],
)
def test_passwords_on_loopback_over_tls_or_when_allowed(server: dict[str, Any]) -> None:
    chargers = [ocpp("a", "WB-1", password="pw"), ocpp("b", "WB-1", 2, password="pw")]
    cfg = parse_config({**OFF, "ocpp_server": server, "chargers": chargers})
    parts = assemble(cfg, 0.0)
    assert parts.ocpp is not None
    station = parts.ocpp.stations["WB-1"]
    assert station.secured and station.password == "pw" and station.password_hash is None


def test_stations_without_passwords_need_no_tls() -> None:
    chargers = [ocpp("a", "WB-1"), ocpp("b", "WB-2", password_hash=HASH)]
    cfg = parse_config({**OFF, "ocpp_server": {"allow_plain_auth": True}, "chargers": chargers})
    parts = assemble(cfg, 0.0)
    assert parts.ocpp is not None
    assert not parts.ocpp.stations["WB-1"].secured and parts.ocpp.stations["WB-2"].password_hash == HASH
    assert parse_config({**OFF, "ocpp_server": {}, "chargers": [ocpp("a", "WB-1")]}).ocpp_server is not None
