"""Nothing dies silently: crashed tasks restart with backoff, MQTT says offline meanwhile, health tells."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from evpilot.api.mqtt import MqttBridge
from evpilot.control.autobalance import node_name
from evpilot.control.runtime import Runtime
from evpilot.control.supervisor import Supervisor, TaskState
from evpilot.devices.shelly_em import ShellyEmDriver
from evpilot.store.sqlite import Store
from tests.helpers import free_port, make_config, poll, serve
from tests.integration.conftest import broker  # noqa: F401  (the fixture)
from tests.integration.mqtt_helpers import Broker, mqtt_config, recorder, until
from tests.integration.test_shelly_autobalance import _config, _rpc


def bridge_of(rt: Runtime) -> MqttBridge:
    """The MQTT bridge the app attached to `rt`."""
    for listener in rt.listeners:
        owner = getattr(listener, "__self__", None)
        if isinstance(owner, MqttBridge):
            return owner
    raise AssertionError("no MQTT bridge is attached to the runtime")


def statuses(messages: list[tuple[str, bytes, bool]]) -> list[str]:
    """The payloads seen on evpilot/status, in order, repeats collapsed."""
    seen: list[str] = []
    for topic, payload, _retain in messages:
        if topic == "evpilot/status" and (not seen or seen[-1] != payload.decode()):
            seen.append(payload.decode())
    return seen


async def test_the_1e308_current_no_longer_ends_the_bridge(broker: Broker) -> None:  # noqa: F811
    config = mqtt_config(broker, esp32evse={"cp1": "evse"})
    async with serve(config, speed=10) as (_base, rt), recorder(broker.port, "evpilot/#") as (rec, client):
        bridge = bridge_of(rt)
        await rec.wait_topic("evpilot/status", "online")
        await client.publish("evse/current/set", "1e308", qos=1)
        # Refused (a parse error) or a crash and a restart: either way the bridge is back.
        await until(
            lambda: (bridge.rejected == 1 or bridge.connects == 2) and bridge.connected.is_set(),
            what="the bridge dealing with 1e308",
        )
        assert rt.supervisor.tasks["mqtt"].state == "running"
        await client.publish("evpilot/cp1/current/set", "9.5", qos=1)
        await until(lambda: rt.charger("cp1").user_limit == 9.5, what="a command after 1e308")
        await rec.wait_topic("evpilot/cp1/current", "9.5")
        await rec.wait_topic("evpilot/status", "online")
        assert bridge.connected.is_set()
        assert rt.charger("cp1").user_limit == 9.5


async def test_a_crashed_bridge_says_offline_restarts_and_health_tells(broker: Broker) -> None:  # noqa: F811
    config = mqtt_config(broker)
    async with (
        serve(config, speed=10) as (base, rt),
        recorder(broker.port, "evpilot/status") as (rec, client),
        httpx.AsyncClient(base_url=base) as http,
    ):
        bridge = bridge_of(rt)
        await rec.wait_topic("evpilot/status", "online")
        # `online` goes out just before the bridge counts itself connected.
        health = await poll(http, "/api/health", lambda d: d["status"] == "ok")
        assert health["status"] == "ok"
        assert health["mqtt"]["connected"] is True
        tasks = {t["name"]: t for t in health["tasks"]}
        assert tasks["mqtt"]["state"] == "running" and tasks["mqtt"]["restarts"] == 0
        assert tasks["control"]["state"] == "running"

        # Not a parse error: the command is valid and applied, then a handler after it raises.
        crashes = 0

        def explode(topic: str) -> None:
            nonlocal crashes
            if crashes == 0:
                crashes += 1
                raise ZeroDivisionError("injected handler failure")

        bridge.on_message = explode
        await client.publish("evpilot/cp1/current/set", "10.5", qos=1)
        await rec.wait(lambda: statuses(rec.messages)[-2:] == ["offline", "online"], what="offline, online")
        assert statuses(rec.messages) == ["online", "offline", "online"]
        assert rt.charger("cp1").user_limit == 10.5

        health = await poll(http, "/api/health", lambda d: d["status"] == "ok")
        mqtt = next(t for t in health["tasks"] if t["name"] == "mqtt")
        assert mqtt["state"] == "running"
        assert mqtt["restarts"] == 1 and mqtt["crashes"] == 1
        assert mqtt["last_error"]["type"] == "ZeroDivisionError"
        assert mqtt["last_error"]["message"] == "injected handler failure"
        assert isinstance(mqtt["last_error"]["at"], float)
        assert health["mqtt"]["connected"] is True and health["mqtt"]["connects"] == 2
        # After the restart the bridge takes commands again.
        await client.publish("evpilot/cp1/current/set", "11.5", qos=1)
        await until(lambda: rt.charger("cp1").user_limit == 11.5, what="a command after the restart")


async def test_health_shows_a_task_that_is_restarting() -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as http:
        gate = asyncio.Event()

        async def broken() -> None:
            raise ValueError("meter on fire")

        async def slow_sleep(seconds: float) -> None:
            await gate.wait()

        rt.supervisor.sleep = slow_sleep
        rt.supervisor.spawn("probe", broken)
        doc = await poll(http, "/api/health", lambda d: any(t["name"] == "probe" for t in d["tasks"]))
        probe = next(t for t in doc["tasks"] if t["name"] == "probe")
        assert probe["state"] == "restarting"
        assert probe["crashes"] == 1 and probe["restarts"] == 0
        assert probe["last_error"]["type"] == "ValueError"
        assert doc["status"] == "degraded"
        assert doc["mqtt"] is None
        await rt.supervisor.stop("probe")
        doc = (await http.get("/api/health")).json()
        assert next(t for t in doc["tasks"] if t["name"] == "probe")["state"] == "stopped"
        assert doc["status"] == "ok"


async def test_a_crashing_task_restarts_with_capped_backoff_reset_after_a_healthy_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [0.0]
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        clock[0] += seconds

    sup = Supervisor(lambda: 1000.0 + clock[0], sleep=fake_sleep, monotonic=lambda: clock[0])
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 10:
            clock[0] += 120.0  # a healthy run, longer than HEALTHY_S, before the next crash
        if runs == 12:
            done.set()
            await asyncio.Event().wait()
        raise OSError(f"boom {runs % 2}")

    with caplog.at_level(logging.ERROR, logger="evpilot.supervisor"):
        entry = sup.spawn("flaky", flaky)
        await asyncio.wait_for(done.wait(), 10)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 0.5, 1.0]
    assert entry.state == TaskState.RUNNING
    assert entry.restarts == 11 and entry.crashes == 11
    assert entry.last_error is not None and entry.last_error.message == "boom 1"
    # Each crash is one log record; the traceback is there whenever the error changes.
    records = [r for r in caplog.records if "flaky" in r.getMessage() and "crashed" in r.getMessage()]
    assert len(records) == 11
    assert all(r.exc_info is not None for r in records)  # the message alternates, so each one is new
    await sup.stop("flaky")
    assert entry.state == TaskState.STOPPED


async def test_the_same_error_again_is_logged_without_a_second_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def no_sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    sup = Supervisor(lambda: 0.0, sleep=no_sleep)
    runs = 0
    done = asyncio.Event()

    async def same() -> None:
        nonlocal runs
        runs += 1
        if runs == 4:
            done.set()
            await asyncio.Event().wait()
        raise KeyError("gone")

    with caplog.at_level(logging.ERROR, logger="evpilot.supervisor"):
        sup.spawn("same", same)
        await asyncio.wait_for(done.wait(), 10)
    records = [r for r in caplog.records if r.getMessage().startswith("same crashed")]
    assert len(records) == 3
    assert [r.exc_info is not None for r in records] == [True, False, False]
    await sup.stop_all()


async def test_a_task_that_raises_cancelled_is_stopped_not_failed() -> None:
    sup = Supervisor(lambda: 0.0)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    entry = sup.spawn("forever", forever)
    await started.wait()
    await sup.stop("forever")
    assert entry.state == TaskState.STOPPED
    assert entry.crashes == 0 and entry.last_error is None


async def test_clean_stop_saves_the_open_session_even_when_the_bridge_stop_raises(
    broker: Broker,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_stop(self: MqttBridge) -> None:
        raise RuntimeError("injected: the bridge cannot stop")

    store = Store(tmp_path / "evpilot.db")
    config = mqtt_config(broker)
    async with serve(config, speed=20, store=store) as (_base, rt):
        await until(lambda: rt.charger("cp1").session is not None, what="an open session")
        await until(lambda: rt.charger("cp1").session.energy_kwh > 0, what="energy")  # type: ignore[union-attr]
        session_id = rt.charger("cp1").session.id  # type: ignore[union-attr]
        monkeypatch.setattr(MqttBridge, "stop", broken_stop)
    store.close()
    again = Store(tmp_path / "evpilot.db")
    saved = again.sessions("cp1", 10)
    lifetime = again.lifetime("cp1")
    again.close()
    assert [s.id for s in saved] == [session_id]
    assert saved[0].stop_reason == "shutdown" and saved[0].energy_kwh > 0
    assert lifetime > 0


async def test_clean_stop_saves_the_open_session_even_when_a_listener_raises(tmp_path: Path) -> None:
    store = Store(tmp_path / "evpilot.db")
    async with serve(make_config(), speed=20, store=store) as (_base, rt):
        await until(lambda: rt.charger("cp1").session is not None, what="an open session")

        def broken(topic: str, message: object) -> None:
            raise RuntimeError("injected listener failure")

        rt.listeners.insert(0, broken)
    store.close()
    again = Store(tmp_path / "evpilot.db")
    saved = again.sessions("cp1", 10)
    again.close()
    assert len(saved) == 1 and saved[0].stop_reason == "shutdown"
    assert rt.supervisor.tasks["listeners"].last_error is not None


async def test_a_crashing_auto_balance_meter_driver_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    real_poll = ShellyEmDriver.poll
    calls = 0

    async def failing_once(self: ShellyEmDriver) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ArithmeticError("injected poller failure")
        await real_poll(self)

    monkeypatch.setattr(ShellyEmDriver, "poll", failing_once)
    em_port = free_port()
    async with serve(_config(em_port), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as http:
        config = {"auto_balance": {"enable": True, "em_ip": "127.0.0.1", "max_current": 16}}
        reply = await _rpc(http, "Service.SetConfig", {"id": 0, "config": config})
        assert reply["result"] == {"restart_required": False}
        doc = await poll(
            http,
            "/api/health",
            lambda d: any(t["name"] == "autobalance:cp1" and t["restarts"] == 1 for t in d["tasks"]),
        )
        poller = next(t for t in doc["tasks"] if t["name"] == "autobalance:cp1")
        assert poller["crashes"] == 1 and poller["last_error"]["type"] == "ArithmeticError"
        await until(lambda: calls > 4, what="polls after the restart")
        await until(lambda: rt.auto_balance.status("cp1")["reason"] == "ok", what="fresh readings again")
        assert rt.auto_balance.status("cp1")["active"] is True
        assert rt.charger("cp1").config.circuit == node_name("cp1")
