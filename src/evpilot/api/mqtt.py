"""MQTT facade: native topics, SmartEVSE- and ESP32-EVSE-compatible topics, Home Assistant discovery.

One client connection per runtime. State goes out when it changes (the runtime's listeners)
and in full every `refresh_s`; commands come in on `.../set` topics, are validated here and
applied through the same core commands as the REST API. A refused command changes nothing
and leaves a retained JSON note on `<prefix>/<charger>/error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

from evpilot.api.esp32evse.discovery import bridge_discovery
from evpilot.api.esp32evse.mqtt import Esp32Topics
from evpilot.api.ha_discovery import discovery_configs, node_slug
from evpilot.api.mqtt_payload import (
    Misrouted,
    Out,
    Rejected,
    fmt,
    onoff,
    parse_bool,
    parse_number,
    payload_text,
    shown,
)
from evpilot.api.smartevse.mqtt import SmartEvseTopics
from evpilot.config import MqttModel, parse_mqtt_url
from evpilot.control import views as vw
from evpilot.control.runtime import Runtime, UnknownCharger, ViewChanges
from evpilot.core import commands as cmd
from evpilot.core.charger import MODES
from evpilot.core.errors import CommandError
from evpilot.devices.evmeter import ApiFedEvMeter

log = logging.getLogger("evpilot.mqtt")

ONLINE, OFFLINE = "online", "offline"
DISCOVERY_KEY = "mqtt:discovery"
# Errors and events waiting for a connection beyond this are dropped (oldest first).
MAX_PENDING = 1000
# A session shorter than this does not reset the reconnect backoff (a broker that accepts
# and then drops us, e.g. for a duplicate client id, must not be hammered).
STABLE_SESSION_S = 10.0
# Publishes in flight at once: aiomqtt's bookkeeping is linear in the number pending, so a full
# refresh of a large site sent in one go would stall the event loop (and the control tick).
PUBLISH_BATCH = 64
# Refusals of commands on one topic: at most one log line and one error publish per this many seconds;
# the ones in between are counted and the next note carries the count (`suppressed`).
REFUSAL_WINDOW_S = 10.0
# Topics tracked for that; beyond it (a flood of distinct topics) refusals share their error topic's window.
REFUSAL_TOPICS = 1000
BUTTON_PAYLOADS = frozenset({"", "PRESS", "ON", "1", "TRUE", "START", "STOP"})
NATIVE_COMMANDS = (
    "enabled",
    "current",
    "mode",
    "phases",
    "energy_cap",
    "time_cap",
    "auto_charge",
    "start",
    "stop",
    "reset",
)
SITE_COMMANDS = ("mode", "capacity")
# The origin of the commands sent on this bridge's own topics (device topics name their device).
ORIGIN = "mqtt:native"

# ---- the bridge ----------------------------------------------------------------------------------


class MqttBridge:
    """Connects a runtime to an MQTT broker; start() after the runtime, stop() before it."""

    def __init__(self, rt: Runtime, cfg: MqttModel) -> None:
        if cfg.url is None:
            raise ValueError("MQTT is not configured (mqtt.url)")
        self.rt = rt
        self.cfg = cfg
        tls, self.host, self.port, user, password = parse_mqtt_url(cfg.url)
        self.tls = tls
        self.username = cfg.username if cfg.username is not None else user
        self.password = cfg.password if cfg.password is not None else password
        self.prefix = cfg.topic_prefix
        self.client_id = cfg.client_id or f"evpilot-{node_slug(self.prefix)}"
        self.status_topic = f"{self.prefix}/status"
        ids = list(rt.engine.chargers)
        self.smartevse = SmartEvseTopics(
            rt, {cid: cfg.smartevse.topic(cid) for cid in ids} if cfg.smartevse.enabled else {}
        )
        self.esp32 = Esp32Topics(rt, cfg.esp32evse)
        self.ev_meters: dict[str, ApiFedEvMeter] = {}
        self._announced: list[str] | None = None
        self._sent: dict[str, str] = {}
        self._pending: list[Out] = []
        # Chargers and site whose views changed since the last flush.
        self._dirty: set[str] = set()
        self._site_dirty = False
        # SmartEVSE chargers whose solar stop timer counts down: rendered at every flush.
        self._timed: set[str] = set()
        self._se_site_key: tuple[Any, ...] | None = None
        self._wake = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._stopping = False
        self.refusal_window_s = REFUSAL_WINDOW_S
        self._refusals: dict[str, list[float]] = {}
        self.suppressed = 0
        self.connected = asyncio.Event()
        self.connects = 0
        self.accepted = 0
        self.rejected = 0
        self.published = 0
        self.on_message: Callable[[str], None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def attach(self) -> None:
        """Install the API-fed EV meters and follow the runtime's events and changed views."""
        self.ev_meters = self.rt.ev_meters
        self.rt.listeners.append(self._on_change)
        self.rt.view_listeners.append(self._on_views)

    async def start(self) -> None:
        """attach() and connect in the background."""
        self.attach()
        self.rt.supervisor.spawn("mqtt", self._run)

    async def stop(self) -> None:
        """Publish `offline`, disconnect cleanly and detach from the runtime."""
        self._stopping = True
        try:
            client = self._client
            if client is not None and self.connected.is_set():
                await self._offline(client)
            await self.rt.supervisor.stop("mqtt")
        finally:
            with contextlib.suppress(ValueError):
                self.rt.listeners.remove(self._on_change)
            with contextlib.suppress(ValueError):
                self.rt.view_listeners.remove(self._on_views)

    async def _offline(self, client: aiomqtt.Client) -> None:
        """Publish `offline` on the availability topics (best effort, at most 5 s)."""
        topics = [self.status_topic, *self.smartevse.availability()]
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(5):
                await self._send(client, [Out(t, OFFLINE, qos=1) for t in topics])

    def _make_client(self) -> aiomqtt.Client:
        context = None
        if self.tls:
            ca = str(self.cfg.tls_ca) if self.cfg.tls_ca is not None else None
            context = ssl.create_default_context(cafile=ca)
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True),
            # A persistent session: the broker queues QoS 1 commands while we are away.
            clean_session=False,
            keepalive=self.cfg.keepalive_s,
            timeout=10,
            tls_context=context,
            # Without it Nagle holds our publishes behind the PUBACK of the command that caused
            # them until the broker's delayed ACK (~40 ms on Linux).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # Many QoS 0 publishes in flight at once is our normal batch, not a sign of trouble.
        client.pending_calls_threshold = 1_000_000
        return client

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.cfg.reconnect_min_s
        while not self._stopping:
            began = loop.time()
            try:
                async with self._make_client() as client:
                    try:
                        await self._session(client)
                    except Exception as exc:
                        if not isinstance(exc, aiomqtt.MqttError):
                            # A crash disconnects cleanly, so the last will would not say so.
                            self.connected.clear()
                            await self._offline(client)
                        raise
            except aiomqtt.MqttError as exc:
                if self._stopping:
                    break
                log.warning("MQTT %s:%d: %s; reconnecting in %.1f s", self.host, self.port, exc, delay)
            finally:
                self.connected.clear()
                self._client = None
            if loop.time() - began >= STABLE_SESSION_S:
                delay = self.cfg.reconnect_min_s
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _session(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._sent.clear()
        for topic in self.subscriptions():
            await client.subscribe(topic, qos=1)
        await self._announce(client)
        online = [self.status_topic, *self.smartevse.availability()]
        await self._send(client, [Out(t, ONLINE, qos=1) for t in online])
        self._mark_all()
        self.connects += 1
        self.connected.set()
        log.info(
            "MQTT connected to %s:%d as %s (prefix %s)", self.host, self.port, self.client_id, self.prefix
        )
        tasks = {
            asyncio.create_task(self._receiver(client), name="evpilot-mqtt-rx"),
            asyncio.create_task(self._publisher(client), name="evpilot-mqtt-tx"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    def subscriptions(self) -> list[str]:
        """The topic filters the bridge listens on."""
        subs = [f"{self.prefix}/+/+/set"]
        subs += self.smartevse.subscriptions()
        subs += self.esp32.subscriptions()
        return subs

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Publish discovery configs and clear the ones announced before that no longer exist."""
        switches = {c.id for c in self.rt.config.chargers if c.switch.startswith("custom_")}
        configs = discovery_configs(self.rt.engine.chargers, self.cfg, switches) if self.cfg.discovery else {}
        if self.cfg.discovery and self.cfg.esp32evse:
            # The ESP32-EVSE bridge announces its own device, as its script does.
            configs.update(
                bridge_discovery(self.rt.engine.chargers, self.cfg.esp32evse, self.cfg.discovery_prefix)
            )
        store = self.rt.store
        before = self._announced
        if before is None and store is not None:
            saved = store.get_setting(DISCOVERY_KEY)
            before = [t for t in saved if isinstance(t, str)] if isinstance(saved, list) else []
        stale = [t for t in before or [] if t not in configs]
        msgs = [Out(t, "", qos=1) for t in stale]
        msgs += [
            Out(t, json.dumps(c, separators=(",", ":"), ensure_ascii=False), qos=1)
            for t, c in configs.items()
        ]
        await self._send(client, msgs)
        if stale:
            log.info("MQTT: removed %d discovery config(s) of entities that no longer exist", len(stale))
        self._announced = sorted(configs)
        if store is not None:
            store.set_setting(DISCOVERY_KEY, self._announced)

    # ---- outgoing ------------------------------------------------------------------------

    def _on_change(self, topic: str, message: dict[str, Any]) -> None:
        if topic in ("session", "event"):
            # Both go to `<prefix>/<charger>/event`: session messages carry `event`, typed ones `type`.
            cid = str(message.get("charger", ""))
            if cid in self.rt.engine.chargers:
                body = json.dumps(message, separators=(",", ":"))
                self._queue(Out(f"{self.prefix}/{cid}/event", body, retain=False, qos=1, dedupe=False))
                if message.get("type") == "access" and message.get("kind") == "switch":
                    # The switch input's state (retained): what custom_* inputs are for.
                    closed = message.get("detail") == "closed"
                    self._queue(Out(f"{self.prefix}/{cid}/switch", onoff(closed)))

    def _on_views(self, topic: str, message: dict[str, Any]) -> None:
        changes: ViewChanges = message["changes"]
        for view in changes.chargers:
            self._dirty.add(view.id)
            if view.id in self.smartevse:
                if view.solar_short_since is None:
                    self._timed.discard(view.id)
                else:
                    self._timed.add(view.id)
        if changes.site is not None:
            self._site_dirty = True
        if changes.chargers or changes.site is not None or self._timed:
            self._wake.set()

    def _queue(self, out: Out) -> None:
        self._pending.append(out)
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]
        self._wake.set()

    def _mark_all(self) -> None:
        self._site_dirty = True
        self._se_site_key = None
        self._dirty.update(self.rt.engine.chargers)
        self._wake.set()

    async def _publisher(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.cfg.refresh_s
        while not self._stopping:
            wait = next_refresh - loop.time()
            if wait > 0 and not self._wake.is_set():
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
                # that lands as the event fires, and this loop would then never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            self._wake.clear()
            if loop.time() >= next_refresh:
                next_refresh = loop.time() + self.cfg.refresh_s
                self._sent.clear()
                self._mark_all()
                self._wake.clear()
            await self._flush(client)

    def render(self) -> list[Out]:
        """Every message that the pending changes call for (before de-duplication)."""
        outs, self._pending = self._pending, []
        dirty, self._dirty = self._dirty, set()
        rt = self.rt
        now = rt.clock.now()
        site = rt.site_view()
        if self._site_dirty:
            self._site_dirty = False
            outs += self.render_site(rt.site_doc_of(site, now))
            key = self.smartevse.site_key(site)
            outs += self.smartevse.render_site(site, refresh=self._se_site_key is None)
            if key != self._se_site_key:
                self._se_site_key = key
                dirty |= set(self.smartevse.prefixes)
        for cid in dirty:
            view = rt.charger_view(cid)
            outs += self.render_charger(cid, vw.charger_doc(view, now))
            if cid in self.smartevse:
                outs += self.smartevse.render(view, site, now)
            if cid in self.esp32:
                outs += self.esp32.render(view)
        for cid in self._timed - dirty:
            outs += self.smartevse.render(rt.charger_view(cid), site, now)
        return outs

    def outgoing(self) -> list[Out]:
        """What render() calls for less what the broker already has (de-duplicated)."""
        send = []
        for out in self.render():
            if out.dedupe:
                if self._sent.get(out.topic) == out.payload:
                    continue
                self._sent[out.topic] = out.payload
            send.append(out)
        return send

    async def _flush(self, client: aiomqtt.Client) -> None:
        await self._send(client, self.outgoing())

    async def _send(self, client: aiomqtt.Client, outs: list[Out]) -> None:
        for i in range(0, len(outs), PUBLISH_BATCH):
            batch = outs[i : i + PUBLISH_BATCH]
            await asyncio.gather(
                *(client.publish(o.topic, o.payload, qos=o.qos, retain=o.retain) for o in batch)
            )
            self.published += len(batch)

    def render_charger(self, cid: str, d: dict[str, Any]) -> list[Out]:
        """Native topics of one charger: the JSON document and one topic per value."""
        base = f"{self.prefix}/{cid}"
        session = d.get("session") or {}
        limits = d["limits"]
        caps = d["caps"]
        current = d["current"]
        values = {
            "pilot": d["state"],
            "work_state": d["work_state"],
            "plugged": onoff(d["plugged"]),
            "charging": onoff(d["charging"]),
            "enabled": onoff(d["enabled"]),
            "auto_charge": onoff(d["auto_charge"]),
            "mode": d["mode_setting"] or "site",
            "effective_mode": d["mode"],
            "phases": d["phase_mode"],
            "active_phases": str(d["phases"]),
            "current": fmt(limits["user"] if limits["user"] is not None else limits["max_current"], 1),
            "override_current": fmt(limits["override"] or 0, 1),
            "signaled_current": fmt(current["signaled"], 1),
            "allocated_current": fmt(current["allocated"], 1),
            "available_current": fmt(current["available"], 1),
            "limit_source": d["limit_source"],
            "available_source": d["available_source"],
            "power": fmt(d["power_w"], 1),
            "session_energy": fmt(session.get("energy_kwh", 0.0)),
            "session_time": fmt(session.get("duration_s", 0)),
            "lifetime_energy": fmt(d["lifetime_kwh"]),
            "temperature": fmt(d["temperature"], 1),
            "problem": onoff(d["errors"]),
            "errors": json.dumps(d["errors"]),
            "energy_cap": fmt(caps["energy_kwh"] or 0),
            "time_cap": fmt(caps["time_min"] or 0),
            "limit_reached": d["limit_reached"] or "none",
        }
        for i in range(3):
            values[f"current_l{i + 1}"] = fmt(d["amperage"][i], 2)
            values[f"voltage_l{i + 1}"] = fmt(d["voltage"][i], 1)
        outs = [Out(f"{base}/state", json.dumps(d, separators=(",", ":"), ensure_ascii=False))]
        outs += [Out(f"{base}/{k}", v) for k, v in values.items()]
        return outs

    def render_site(self, d: dict[str, Any]) -> list[Out]:
        """Native site topics."""
        base = f"{self.prefix}/site"
        mains = d.get("mains")
        cur = mains["currents"] if mains else [None, None, None]
        avail = d.get("available") or [None, None, None]
        sim = d.get("sim")
        values = {
            "mode": d["mode"],
            "pv_power": fmt(sim["pv_w"], 1) if sim else "None",
            "battery_current": fmt(d.get("battery_current"), 2),
            "capacity_limit": fmt(d.get("capacity_limit"), 1),
            "mains_limit": fmt(d["mains_limit"], 1),
            "solar_surplus": fmt(d.get("solar_surplus"), 2),
            "fallback": onoff(d.get("fallback")),
        }
        for i in range(3):
            values[f"mains_l{i + 1}"] = fmt(cur[i], 2)
            values[f"available_l{i + 1}"] = fmt(avail[i], 2)
        outs = [Out(f"{base}/state", json.dumps(d, separators=(",", ":"), ensure_ascii=False))]
        outs += [Out(f"{base}/{k}", v) for k, v in values.items()]
        return outs

    # ---- incoming ------------------------------------------------------------------------

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.handle_message(message.topic.value, message.payload, bool(message.retain))

    def handle_message(self, topic: str, payload: object, retain: bool = False) -> bool:
        """Validate and apply one incoming command; True if it was applied."""
        if retain:
            # Only stale retained messages arrive flagged: live ones are delivered with retain=0.
            log.info("MQTT: ignoring a retained (stale) command on %s", topic)
            return False
        cid: str | None = None
        try:
            kind, cid, what = self._route(topic)
            text = payload_text(payload)
            if kind == "native":
                self._native(cid, what, text)
            elif kind == "site":
                self._site(what, text)
            elif kind == "smartevse":
                assert cid is not None
                self.smartevse.handle(cid, what, text, self.ev_meters)
            else:
                assert cid is not None
                self.esp32.handle(cid, what, text)
        except (Rejected, CommandError, UnknownCharger) as exc:
            if isinstance(exc, CommandError):
                reason = f"{exc.field}: {exc.message}"
            elif isinstance(exc, UnknownCharger):
                reason = f"no charger {exc.args[0]!r}"
            else:
                reason = str(exc)
                if isinstance(exc, Misrouted):
                    cid = exc.cid
            self._reject(cid, topic, payload, reason)
            return False
        self.accepted += 1
        if self.on_message is not None:
            self.on_message(topic)
        return True

    def _reject(self, cid: str | None, topic: str, payload: object, reason: str) -> None:
        self.rejected += 1
        where = f"{self.prefix}/{cid}/error" if cid else f"{self.prefix}/error"
        suppressed = self._refusal_window(topic[:200], where)
        if suppressed is None:
            self.suppressed += 1
            return
        more = f" ({suppressed} more refused since the last note)" if suppressed else ""
        log.warning("MQTT: refused %s %r: %s%s", topic[:200], shown(payload), reason, more)
        body: dict[str, Any] = {
            "topic": topic[:200],
            "payload": shown(payload),
            "error": reason,
            "at": self.rt.clock.now(),
        }
        if suppressed:
            body["suppressed"] = suppressed
        self._queue(Out(where, json.dumps(body, ensure_ascii=False), qos=1, dedupe=False))

    def _refusal_window(self, topic: str, where: str) -> int | None:
        """None if this refusal falls in its topic's quiet window, else how many that window swallowed."""
        now = time.monotonic()
        windows = self._refusals
        if topic not in windows and len(windows) >= REFUSAL_TOPICS:
            for key in [k for k, (opened, _n) in windows.items() if now - opened >= self.refusal_window_s]:
                del windows[key]
            if len(windows) >= REFUSAL_TOPICS:
                topic = where
        window = windows.get(topic)
        if window is not None and now - window[0] < self.refusal_window_s:
            window[1] += 1
            return None
        windows[topic] = [now, 0]
        return 0 if window is None else int(window[1])

    def _route(self, topic: str) -> tuple[str, str | None, str]:
        esp = self.esp32.route(topic)
        if esp is not None:
            return "esp32", esp[0], esp[1]
        se = self.smartevse.route(topic)
        if se is not None:
            return "smartevse", se[0], se[1]
        if topic.startswith(self.prefix + "/"):
            parts = topic[len(self.prefix) + 1 :].split("/")
            if len(parts) == 3 and parts[2] == "set":
                target, cmd = parts[0], parts[1]
                if target == "site":
                    if cmd not in SITE_COMMANDS:
                        raise Misrouted("site", f"unknown site command {cmd!r} ({', '.join(SITE_COMMANDS)})")
                    return "site", "site", cmd
                if target not in self.rt.engine.chargers:
                    raise Rejected(f"no charger {target!r} (chargers: {', '.join(self.rt.engine.chargers)})")
                if cmd not in NATIVE_COMMANDS:
                    raise Misrouted(target, f"unknown command {cmd!r} ({', '.join(NATIVE_COMMANDS)})")
                return "native", target, cmd
        raise Rejected(f"unexpected topic {topic[:120]!r}")

    # ---- command tables --------------------------------------------------------------------

    def _apply(self, command: cmd.Command, what: str) -> None:
        """Apply a command from this bridge's own topics; a refusal names the topic's command."""
        try:
            self.rt.apply(command, ORIGIN)
        except CommandError as exc:
            raise CommandError(what, exc.message, exc.allowed) from None

    def _native(self, cid: str | None, what: str, text: str) -> None:
        assert cid is not None
        command: cmd.Command
        if what == "enabled":
            command = cmd.SetEnabled(cid, parse_bool(text, what))
        elif what == "auto_charge":
            command = cmd.SetAutoCharge(cid, parse_bool(text, what))
        elif what == "current":
            amps = None if text.lower() in ("none", "null") else parse_number(text, what)
            command = cmd.SetUserLimit(cid, amps)
        elif what == "mode":
            mode = None if text in ("site", "null", "none") else text
            if mode is not None and mode not in MODES:
                raise Rejected(f"mode: {text!r} is not one of site, {', '.join(MODES)}")
            command = cmd.SetMode(cid, mode)
        elif what == "phases":
            command = cmd.SetPhaseMode(cid, {"1": "always_1p", "3": "always_3p"}.get(text, text))
        elif what == "energy_cap":
            command = cmd.SetEnergyCap(cid, parse_number(text, what) or None)
        elif what == "time_cap":
            command = cmd.SetTimeCap(cid, parse_number(text, what) or None)
        else:
            if text.upper() not in BUTTON_PAYLOADS:
                raise Rejected(f"{what}: payload must be empty or PRESS, got {text[:40]!r}")
            if what == "start":
                command = cmd.Start(cid)
            elif what == "stop":
                command = cmd.Stop(cid)
            else:
                command = cmd.ResetFaults(cid)
        self._apply(command, what)

    def _site(self, what: str, text: str) -> None:
        if what == "mode":
            self._apply(cmd.SetSiteMode(text), what)
        else:
            self._apply(cmd.SetCapacityLimit(parse_number(text, what) or None), what)
