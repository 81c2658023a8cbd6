"""`evpilot run --mqtt URL` as a real process: availability, last will on kill -9, clean exit."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from evpilot.cli import main
from tests.helpers import evpilot_process
from tests.integration.mqtt_helpers import Broker, recorder


async def test_last_will_marks_evpilot_offline_after_kill_9(broker: Broker, tmp_path: Path) -> None:
    config = {"mqtt": {"topic_prefix": "home/ev"}}
    async with recorder(broker.port, "home/ev/status", "homeassistant/+/+/+/config") as (rec, _c):
        with evpilot_process(tmp_path, config, speed=5, extra=["--mqtt", broker.url]) as (_base, proc):
            await rec.wait_topic("home/ev/status", "online")
            cfg = next(t for t in rec.latest if t.startswith("homeassistant/sensor/home_ev_cp1/"))
            assert b'"availability_topic":"home/ev/status"' in rec.latest[cfg]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await rec.wait_topic("home/ev/status", "offline")
            assert rec.messages[-1][:2] == ("home/ev/status", b"offline")


async def test_clean_stop_publishes_offline(broker: Broker, tmp_path: Path) -> None:
    async with recorder(broker.port, "evpilot/status") as (rec, _c):
        with evpilot_process(tmp_path, None, speed=5, extra=["--mqtt", broker.url]):
            await rec.wait_topic("evpilot/status", "online")
        # evpilot_process ends with SIGTERM: a clean stop, the will is not needed.
        await rec.wait_topic("evpilot/status", "offline")


def test_bad_mqtt_url_is_refused_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--mqtt", "http://broker:1883"])
    assert exit_.value.code == 2
    assert "mqtt:// or mqtts://" in capsys.readouterr().err
