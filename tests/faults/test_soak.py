"""The soak harness itself: a short --quick run injects every kind of fault and finds no violation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.mqtt_helpers import mosquitto_binary, mosquitto_client

ROOT = Path(__file__).resolve().parents[2]


def test_a_quick_soak_injects_every_fault_and_holds_every_invariant(tmp_path: Path) -> None:
    # The soak starts its own broker: .ci/run installs mosquitto, so a missing one is a failure.
    mosquitto_binary()
    mosquitto_client("mosquitto_pub")
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--quick", "--hours", "0.05", "--per-kind", "2"]
    cmd += ["--fuzz-burst", "6", "--seed", "3", "--max-wall-s", "120", "--work-dir", str(tmp_path), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    rows = {line[:40].strip(): line[40:].split() for line in out.splitlines() if line[40:].strip()}
    for fault in (
        "circuit meter dropout",
        "mains meter dropout",
        "broker restart",
        "kill -9 and restart",
        "fuzz burst",
        "WebSocket client never reads",
    ):
        assert rows[fault] == ["2"], out
    # Every invariant was checked (held > 0) and none violated; health only where the build has it.
    for check in (
        "no node over its limit >= 6 s",
        "no acknowledged write lost",
        "<= 10 Wh lost per crash",
        "RSS bounded",
        "process never dies on its own",
        "fuzz refused with a 4xx",
        "MQTT back after a broker restart",
    ):
        held, violated = (int(x) for x in rows[check])
        assert held > 0 and violated == 0, out
    assert "all invariants held" in out
    assert (tmp_path / "evpilot-3.log").exists()  # two kills: three runs on one data directory
