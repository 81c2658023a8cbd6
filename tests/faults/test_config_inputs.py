"""Config files that were silently misread or crashed the CLI: checked through the real `evpilot` command."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.integration.test_cli_config import evpilot


def test_a_duplicate_key_is_an_error_naming_the_key_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    # Was: the second `site:` won silently and `config check` said ok.
    text = "site:\n  mains_limit: 25\nchargers:\n  - id: cp1\nsite:\n  mains_limit: 40\n"
    path.write_text(text, encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode == 1
    assert "duplicate key 'site' on line 5 (first on line 1)" in r.stderr
    nested = tmp_path / "nested.yaml"
    nested.write_text("chargers:\n  - id: cp1\n    max_current: 16\n    max_current: 32\n", encoding="utf-8")
    r = evpilot("config", "check", str(nested))
    assert r.returncode == 1 and "duplicate key 'max_current' on line 4" in r.stderr


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    text = "chargers:\n  - &c {id: cp1, max_current: 16}\n  - <<: *c\n    id: cp2\n"
    path.write_text(text, encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode == 0, r.stderr


def test_a_non_utf8_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("site:\n  mains_limit: 25  # garage été\n".encode("latin-1"))
    r = evpilot("config", "check", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{path}: (file): {path}: not UTF-8 text" in r.stderr
    r = evpilot("run", "--config", str(path), "--data-dir", str(tmp_path / "data"), "--http", "127.0.0.1:0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"config error: (file): {path}: not UTF-8 text")


def test_no_mains_meter_with_grid_limited_chargers_is_refused(tmp_path: Path) -> None:
    # Was accepted: every mode but off then held the chargers at 0 A forever.
    path = tmp_path / "none.yaml"
    data = {"site": {"mains_meter": "none"}, "chargers": [{"id": "cp1"}, {"id": "cp2", "mode": "off"}]}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    r = evpilot("config", "check", str(path))
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"{path}: site.mains_meter: none leaves charger(s) cp1 at 0 A")
    for mode in ("normal", "solar", "min+solar"):
        data = {"site": {"mains_meter": "none", "mode": mode}, "chargers": [{"id": "cp1"}]}
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        assert evpilot("config", "check", str(path)).returncode == 1, mode
    # Off, by the site's mode or each charger's own: nothing is left waiting for mains readings.
    for data in (
        {"site": {"mains_meter": "none", "mode": "off"}, "chargers": [{"id": "cp1"}]},
        {"site": {"mains_meter": "none"}, "chargers": [{"id": "cp1", "mode": "off"}]},
    ):
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        r = evpilot("config", "check", str(path))
        assert r.returncode == 0, r.stderr
