"""The `evpilot config` commands and config errors at start-up, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import free_port

BAD_CONFIG = {
    "site": {"mains_limit": 5, "mode": "turbo"},
    "chargers": [{"id": "cp1", "max_current": 100, "max_temp": 90}, {"id": "bad id!"}],
    "sim": {"unknown_key": 1, "ambient_c": 1000, "house_base": [1, -1, 1]},
}


def evpilot(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the evpilot CLI and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "evpilot", *args], capture_output=True, text=True, timeout=timeout
    )


def test_config_check_prints_every_error_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(BAD_CONFIG), encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    expected = {
        "site.mains_limit": "greater than or equal to 10",
        "site.mode": "'off'",
        "chargers.0.max_current": "less than or equal to 80",
        "chargers.0.max_temp": "less than or equal to 75",
        "chargers.1.id": "pattern",
        "sim.unknown_key": "unknown key 'unknown_key'",
        "sim.ambient_c": "less than or equal to 90",
        "sim.house_base.1": "greater than or equal to 0",
    }
    for key, reason in expected.items():
        line = next((x for x in lines if f": {key}: " in x), None)
        assert line is not None, f"{key} missing in {lines}"
        assert line.startswith(str(path)) and reason in line
    assert len(lines) == len(expected)


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(
        yaml.safe_dump({"site": {"mains_limit": 35}, "chargers": [{"id": "cp1", "max_current": 16}]}),
        encoding="utf-8",
    )
    r = evpilot("config", "check", str(path))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_config_check_reports_yaml_and_file_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("site: [unclosed\n", encoding="utf-8")
    r = evpilot("config", "check", str(broken))
    assert r.returncode != 0 and "(yaml)" in r.stderr
    r = evpilot("config", "check", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "(file)" in r.stderr


def test_config_schema_is_json_schema() -> None:
    r = evpilot("config", "schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["type"] == "object" and schema["title"] == "AppConfig"
    for key in ("site", "chargers", "sim", "control", "http"):
        assert key in schema["properties"]
    assert schema["additionalProperties"] is False
    charger = schema["$defs"]["ChargerModel"]["properties"]
    assert charger["max_current"]["maximum"] == 80 and charger["max_current"]["minimum"] == 10


def test_config_error_stops_run_with_key_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"chargers": [{"id": "cp1", "phases": 2}]}), encoding="utf-8")
    r = evpilot(
        "run", "--config", str(path), "--http", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path)
    )
    assert r.returncode != 0
    assert "chargers.0.phases" in r.stderr and "1 or 3" in r.stderr
    assert not (tmp_path / "evpilot.sqlite3").exists()


def test_bad_command_line_is_refused() -> None:
    r = evpilot("run", "--speed", "0")
    assert r.returncode == 2 and "speed" in r.stderr
    r = evpilot("run", "--http", "localhost")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


def test_config_check_refuses_a_site_whose_fallbacks_overload_a_fuse(tmp_path: Path) -> None:
    path = tmp_path / "depot.yaml"
    site = {"mains_limit": 25, "fallback_current": 80, "circuits": [{"name": "row", "limit": 10}]}
    chargers = [{"id": f"cp{i}", "circuit": "row", "safe_current": 16} for i in range(8)]
    path.write_text(yaml.safe_dump({"site": site, "chargers": chargers}), encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode != 0 and "ok" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        f"{path}: site: mains L1: chargers' safe_current adds up to 128 A, above its 25 A limit",
        f"{path}: site: mains L1: chargers' fallback_current adds up to 256 A, above its 25 A limit",
        f"{path}: site: circuit 'row' L1: chargers' safe_current adds up to 128 A, above its 10 A limit",
        f"{path}: site: circuit 'row' L1: chargers' fallback_current adds up to 256 A, above its 10 A limit",
    ]
    # The same site with chargers that stop on a lost meter or controller is fine.
    site["fallback_current"] = 0
    for charger in chargers:
        charger["safe_current"] = 0
    path.write_text(yaml.safe_dump({"site": site, "chargers": chargers}), encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode == 0, r.stderr


def test_config_check_names_the_phase_of_one_phase_chargers(tmp_path: Path) -> None:
    path = tmp_path / "garage.yaml"
    config = {
        "site": {"mains_limit": 35, "circuits": [{"name": "garage", "limit": 25}]},
        "chargers": [
            {"id": "left", "phases": 1, "phase": 2, "circuit": "garage", "safe_current": 16},
            {"id": "right", "phases": 1, "phase": 2, "circuit": "garage", "safe_current": 16},
            {"id": "wall", "phases": 1, "phase": 3, "circuit": "garage", "safe_current": 16},
            {"id": "drive", "phase_rotation": "L2L3L1", "safe_current": 16},
        ],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"{path}: site: mains L2: chargers' safe_current adds up to 48 A, above its 35 A limit",
        f"{path}: site: circuit 'garage' L2: chargers' safe_current adds up to 32 A, above its 25 A limit",
    ]


def test_fallback_overload_stops_run(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    config = {"site": {"mains_limit": 25, "fallback_current": 80}, "chargers": [{"id": "cp1"}]}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    r = evpilot(
        "run", "--config", str(path), "--http", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path)
    )
    assert r.returncode != 0
    want = "config error: site: mains L1: chargers' fallback_current adds up to 32 A, above its 25 A limit"
    assert want in r.stderr
    assert not (tmp_path / "evpilot.sqlite3").exists()


def test_config_schema_lists_the_wiring_and_phase_switch_keys() -> None:
    r = evpilot("config", "schema")
    assert r.returncode == 0
    defs = json.loads(r.stdout)["$defs"]
    rotation = defs["ChargerModel"]["properties"]["phase_rotation"]
    assert {"L1L2L3", "L2L3L1", "L3L1L2"} <= set(json.dumps(rotation).replace('"', " ").split())
    per_session = defs["PhaseSwitchModel"]["properties"]["max_per_session"]
    assert per_session["type"] == "integer" and per_session["default"] == 4
    assert per_session["minimum"] == 0 and per_session["maximum"] == 100
    meter = defs["CircuitModel"]["properties"]["meter"]
    assert meter["default"] == "none"
    assert meter["oneOf"] == [
        {"enum": ["none", "api"], "type": "string"},
        {"$ref": "#/$defs/ModbusMeterModel"},
        {"$ref": "#/$defs/HomeWizardMeterModel"},
        {"$ref": "#/$defs/ShellyMeterModel"},
    ]


TYPICAL_MISTAKES: list[tuple[str, list[str]]] = [
    # A misspelt key, at the top level and nested, with the closest known key at that level.
    (
        "site:\n  mains_limt: 25\n",
        ["site.mains_limt: unknown key 'mains_limt' (did you mean 'mains_limit'?)"],
    ),
    ("sitee:\n  mains_limit: 25\n", ["sitee: unknown key 'sitee' (did you mean 'site'?)"]),
    (
        "chargers:\n  - id: cp1\n    max_curent: 16\n",
        ["chargers.0.max_curent: unknown key 'max_curent' (did you mean 'max_current'?)"],
    ),
    (
        "sim:\n  cars: [{charger: cp1, socc: 20}]\n",
        ["sim.cars.0.socc: unknown key 'socc' (did you mean 'soc'?)"],
    ),
    ("shelly:\n  zzz: 1\n", ["shelly.zzz: unknown key 'zzz'"]),
    # Wrong types: what was found, in the file's words (no model names).
    ("site: 5\n", ["site: expected a mapping of keys, got the number 5"]),
    ("chargers: {id: cp1}\n", ["chargers: expected a list, got a mapping"]),
    (
        "site:\n  mains_limit: lots\n",
        ["site.mains_limit: Input should be a valid number, unable to parse string as a number, got 'lots'"],
    ),
    # Out of range, with the value given.
    (
        "site:\n  mains_limit: 9999\n",
        ["site.mains_limit: Input should be less than or equal to 200, got 9999"],
    ),
    # References checked across the file name the key that holds the reference.
    (
        "site:\n  circuits: [{name: garage, limit: 25}]\nchargers:\n  - {id: cp1, circuit: garge}\n",
        ["chargers.0.circuit: unknown circuit 'garge' (did you mean 'garage'?)"],
    ),
    (
        "chargers:\n  - {id: cp1, circuit: shed}\n",
        ["chargers.0.circuit: unknown circuit 'shed' (known: none)"],
    ),
    ("sim:\n  cars: [{charger: cp9}]\n", ["sim.cars.0.charger: unknown charger 'cp9' (did you mean 'cp1'?)"]),
    (
        "site:\n  circuits: [{name: a, limit: 20, parent: b}]\n",
        ["site.circuits.0.parent: unknown parent circuit 'b' (known: 'a')"],
    ),
]


def test_typical_mistakes_name_the_key_and_say_what_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    for text, expected in TYPICAL_MISTAKES:
        path.write_text(text, encoding="utf-8")
        r = evpilot("config", "check", str(path))
        assert r.returncode == 1, text
        assert r.stderr.strip().splitlines() == [f"{path}: {line}" for line in expected], text
        assert "Model" not in r.stderr and "instance of" not in r.stderr and "Value error" not in r.stderr


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("site:\n  mains_limit: 25\n mode: smart\n", encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"{path}: (yaml): {path}: line 3, column 2: ")
    assert "check the indentation" in line and "<unicode string>" not in line
    path.write_text("site: [unclosed\n", encoding="utf-8")
    r = evpilot(
        "run", "--config", str(path), "--http", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d")
    )
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"config error: (yaml): {path}: line 2, column 1: ")
    assert "flow sequence that starts on line 1, column 7" in line and "<unicode string>" not in line


def evpilot_without_homewizard(*args: str) -> subprocess.CompletedProcess[str]:
    """The evpilot CLI in an installation whose registry has no HomeWizard driver."""
    code = (
        "import sys; from evpilot.devices import registry; del registry.METER_DRIVERS['homewizard'];"
        " from evpilot.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_a_meter_driver_the_installation_lacks_is_refused_at_check_and_at_start(tmp_path: Path) -> None:
    config = {"site": {"mains_meter": {"type": "homewizard", "host": "127.0.0.1"}}}
    path = tmp_path / "p1.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    expected = "site.mains_meter: meter mains: driver 'homewizard' is not available in this installation"
    r = evpilot_without_homewizard("config", "check", str(path))
    assert r.returncode == 1
    assert r.stderr.startswith(f"{path}: {expected} (available: ")
    r = evpilot_without_homewizard("run", "--config", str(path), "--http", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert r.stderr.startswith(f"config error: {expected} (available: ")
    assert evpilot("config", "check", str(path)).returncode == 0


def test_config_check_refuses_secondaries_whose_failsafe_currents_overload_the_shared_fuse(
    tmp_path: Path,
) -> None:
    path = tmp_path / "primary.yaml"
    site = {"mains_limit": 20, "mains_meter": "api", "fallback_current": 0}
    chargers = [
        {
            "id": f"node{i}",
            "safe_current": 6,
            "driver": {"type": "modbus", "host": f"192.168.1.{30 + i}", "unit": 1, "watchdog_s": 10},
        }
        for i in range(4)
    ]
    doc = {"site": site, "sim": {"enabled": False}, "chargers": chargers}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode != 0 and "ok" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        f"{path}: site: mains L1: chargers' safe_current adds up to 24 A (Modbus secondaries' failsafe"
        " current: 24 A), above its 20 A limit",
    ]
    # A failsafe current of 0 on one node (it stops on a lost link) makes the rest fit.
    chargers[3]["safe_current"] = 0
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode == 0 and r.stdout.strip() == f"{path}: ok", r.stderr
