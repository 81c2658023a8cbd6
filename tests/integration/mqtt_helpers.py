"""A real mosquitto broker on a free loopback port, and an MQTT recorder built on aiomqtt."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from evpilot.api.mqtt import MqttBridge
from evpilot.config import AppConfig
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime
from evpilot.store.sqlite import Store
from tests.helpers import free_port, make_config


def mosquitto_binary() -> str:
    """The mosquitto broker (on PATH or in /usr/sbin, where Debian installs it)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    return found


def mosquitto_client(name: str) -> str:
    """mosquitto_pub or mosquitto_sub."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install mosquitto-clients)")
    return found


class Broker:
    """mosquitto listening on 127.0.0.1:`port`, with persistence so a restart keeps sessions."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Started as root, mosquitto would drop to user `mosquitto` and could not write here.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            f"log_dest file {self.dir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 5000\n",
            encoding="utf-8",
        )

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:<port>"""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 20 s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves its persistent sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Recorder:
    """Every message seen on the subscribed filters, in order, with its retain flag."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    latest: dict[str, bytes] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, topic: str, payload: bytes, retain: bool) -> None:
        """Record one message."""
        self.messages.append((topic, payload, retain))
        self.latest[topic] = payload
        self.changed.set()

    def text(self, topic: str) -> str | None:
        """The newest payload of `topic` as text."""
        value = self.latest.get(topic)
        return None if value is None else value.decode()

    async def wait(self, check: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
        """Wait until `check()` is truthy (polls on every new message and every 50 ms)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = check()
            if result:
                return result
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what or check}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.05))

    async def wait_topic(self, topic: str, value: str | None = None, timeout: float = 20.0) -> str:
        """Wait until `topic` carries `value` (or anything when None); returns the payload."""

        def check() -> str | None:
            got = self.text(topic)
            if got is None or (value is not None and got != value):
                return None
            return got

        result = await self.wait(check, timeout, f"{topic} = {value!r} (now {self.text(topic)!r})")
        assert isinstance(result, str)
        return result


@contextlib.asynccontextmanager
async def recorder(port: int, *filters: str) -> AsyncIterator[tuple[Recorder, aiomqtt.Client]]:
    """An aiomqtt client subscribed to `filters` that records into a Recorder; yields (recorder, client)."""
    rec = Recorder()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"test-rec-{free_port()}") as client:
        for f in filters or ("#",):
            await client.subscribe(f, qos=1)

        async def pump() -> None:
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                rec.add(m.topic.value, payload, bool(m.retain))

        task = asyncio.create_task(pump())
        try:
            yield rec, client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def mqtt_config(broker: Broker, extra: dict[str, Any] | None = None, **mqtt: Any) -> AppConfig:
    """The default simulated home with MQTT pointed at `broker`."""
    data: dict[str, Any] = {"mqtt": {"url": broker.url, "refresh_s": 60, **mqtt}}
    data.update(extra or {})
    return make_config(data)


@contextlib.asynccontextmanager
async def running(
    config: AppConfig, speed: float = 20.0, store: Store | None = None
) -> AsyncIterator[tuple[Runtime, MqttBridge]]:
    """A runtime with its MQTT bridge connected (no HTTP server)."""
    rt = Runtime(config, ScaledClock(speed), store)
    await rt.start()
    bridge = MqttBridge(rt, config.mqtt)
    await bridge.start()
    try:
        await asyncio.wait_for(bridge.connected.wait(), 20)
        yield rt, bridge
    finally:
        await bridge.stop()
        await rt.stop()


async def until(check: Any, timeout: float = 20.0, what: str = "") -> None:
    """Poll `check()` until truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)
