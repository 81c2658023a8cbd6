"""Refused MQTT commands: the retained error topic and the log are rate-limited per topic."""

from __future__ import annotations

import json
import logging

import pytest

from evpilot.api import mqtt
from tests.integration.conftest import broker  # noqa: F401  (the fixture)
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder, running, until


def refusal_logs(caplog: pytest.LogCaptureFixture, topic: str) -> list[str]:
    """The log lines about refusals on `topic`."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"MQTT: refused {topic} ")]


async def test_a_flood_of_refused_commands_gives_one_note_and_one_log_line_per_topic(
    broker: Broker,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = mqtt_config(broker)
    caplog.set_level(logging.WARNING, logger="evpilot.mqtt")
    async with running(config) as (rt, bridge), recorder(broker.port, "evpilot/+/error") as (rec, client):
        bridge.refusal_window_s = 3600.0  # nothing leaves the window during the test
        for i in range(50):
            await client.publish("evpilot/cp1/current/set", f"abc{i}", qos=1)
        await client.publish("evpilot/cp1/mode/set", "turbo", qos=1)
        await until(lambda: bridge.rejected == 51, what="51 refusals")
        await rec.wait_topic("evpilot/cp1/error")
        await rec.wait(
            lambda: sum(t == "evpilot/cp1/error" for t, _p, _r in rec.messages) == 2, what="two notes"
        )
        notes = [json.loads(p) for t, p, _r in rec.messages if t == "evpilot/cp1/error"]
        # One note per topic: the first refusal of each; the mode topic has its own window.
        assert sorted(n["topic"] for n in notes) == ["evpilot/cp1/current/set", "evpilot/cp1/mode/set"]
        first = next(n for n in notes if n["topic"] == "evpilot/cp1/current/set")
        assert first["payload"] == "abc0" and "suppressed" not in first
        assert bridge.suppressed == 49
        assert len(refusal_logs(caplog, "evpilot/cp1/current/set")) == 1
        assert len(refusal_logs(caplog, "evpilot/cp1/mode/set")) == 1
        assert rt.charger("cp1").mode is None

        # When the window has passed, the next refusal is published with the count it swallowed.
        bridge.refusal_window_s = 0.0
        await client.publish("evpilot/cp1/current/set", "xyz", qos=1)
        await rec.wait(
            lambda: json.loads(rec.text("evpilot/cp1/error") or "{}").get("payload") == "xyz",
            what="the next note",
        )
        note = json.loads(rec.text("evpilot/cp1/error") or "{}")
        assert note["suppressed"] == 49
        lines = refusal_logs(caplog, "evpilot/cp1/current/set")
        assert len(lines) == 2 and "49 more refused since the last note" in lines[-1]


async def test_many_distinct_topics_share_their_error_topic_window(
    broker: Broker,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mqtt, "REFUSAL_TOPICS", 5)
    config = mqtt_config(broker)
    async with running(config) as (_rt, bridge), recorder(broker.port, "evpilot/error") as (rec, client):
        bridge.refusal_window_s = 3600.0
        for i in range(40):
            await client.publish(f"evpilot/nobody{i}/current/set", "10", qos=1)
        await until(lambda: bridge.rejected == 40, what="40 refusals")
        await rec.wait_topic("evpilot/error")
        # Five topics are tracked; the rest share the window of their error topic (one more note).
        await rec.wait(lambda: len(rec.messages) == 6, what="six notes")
        assert bridge.suppressed == 34
        assert len(bridge._refusals) <= 6
