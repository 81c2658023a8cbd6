"""Access to charging at run time: cards and swipes, the switch input, the cable lock and windows."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evpilot.core import commands as cmd
from evpilot.core import events as ev
from evpilot.core.access import (
    LOCK_ATTEMPTS,
    LOCK_TIMEOUT_S,
    MAX_CARDS,
    AuthMethod,
    Card,
    LockMode,
    LockSetting,
    LockState,
    LockStatus,
    RfidMode,
    SwipeAction,
    SwitchMode,
    TagStatus,
    Window,
    decide_swipe,
    normalize_uid,
    parse_days,
    parse_hhmm,
    step_lock,
    tag_status,
    want_locked,
)
from evpilot.core.errors import CommandError
from evpilot.core.iec61851 import STOP_DEADLINE_S
from evpilot.core.schedule import DAY_S

if TYPE_CHECKING:
    from evpilot.control.runtime import Runtime
    from evpilot.core.charger import Charger
    from evpilot.devices.base import CardReader, ChargerLink, LockActuator, SwitchInput

log = logging.getLogger("evpilot.access")

# Lease names: each shows as the binding source of a charger's limit while it holds it at 0 A.
LOCK_SOURCE = "lock"
SCHEDULE_SOURCE = "schedule"
SWITCH_SOURCE = "switch"
CARD_SOURCE = "card"
_OPERATING = (RfidMode.DISABLED, RfidMode.ENABLE_ALL, RfidMode.ENABLE_ONE, RfidMode.REMOTE)
_BUTTONS = (SwitchMode.ACCESS_BUTTON, SwitchMode.SMART_SOLAR_BUTTON, SwitchMode.CUSTOM_BUTTON)
# A grid relay contact reads closed until the hardware or the API says otherwise.
_DEFAULT_CLOSED = {SwitchMode.GRID_RELAY: True}
_NO_LOCK = LockMode.DISABLED
# Origins of the commands the access hardware and timers send (the log's `origin=`, GET /api/commands).
READER_ORIGIN = "reader"
GPIO_ORIGIN = "gpio"
TIMER_ORIGIN = "timer"
LOCK_ORIGIN = "lock"
OCPP_ORIGIN = "ocpp"
# Per charger, what a run-time change leaves behind for the next start (docs/access.md).
_KEY = "access:"
# A card holds a charger in these modes; its authorization is restored with it.
_HOLDING = {RfidMode.ENABLE_ONE: AuthMethod.CARD, RfidMode.REMOTE: AuthMethod.REMOTE}


def event_source(origin: str) -> str:
    """The `source` of an access event for a command's origin (`api` for any API face)."""
    if origin in (READER_ORIGIN, GPIO_ORIGIN, TIMER_ORIGIN, LOCK_ORIGIN):
        return origin
    return origin.split(":", 1)[0] if origin.startswith(("modbus", "mqtt", "ocpp")) else "api"


@dataclass(slots=True)
class ChargerAccess:
    """One charger's access state."""

    rfid: RfidMode
    operating: RfidMode
    configured: RfidMode
    switch: SwitchMode
    lock_mode: LockMode
    windows: tuple[Window, ...]
    auth_timeout_s: float
    holder: str | None = None
    authorized_at: float | None = None
    lock: LockStatus = field(default_factory=LockStatus)
    lock_setting: LockSetting = LockSetting.AUTO
    sensed: bool | None = None
    closed: bool | None = None
    access_on: bool = True
    reader: CardReader | None = None
    switch_input: SwitchInput | None = None
    actuator: LockActuator | None = None
    last_hw_closed: bool | None = None
    # A forced unlock came while the lock was in fault: its next step starts a new set of attempts.
    unlock_retry: bool = False


@dataclass(frozen=True, slots=True)
class SwipeResult:
    """What a swipe did: `action` (authorize, stop, learn, delete, remote, refuse) and a reason."""

    uid: str
    action: str
    reason: str = ""


class AccessControl:
    """Owns the cards and each charger's access state; `tick` runs before every control step."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last_swipe: SwipeResult | None = None
        self.cards: dict[str, Card] = {}
        if rt.store is not None:
            self.cards = {c.uid: c for c in rt.store.cards()}
        self.chargers: dict[str, ChargerAccess] = {}
        sim = rt.sim
        for model in rt.config.chargers:
            windows = tuple(
                Window(
                    parse_hhmm(w.start, "start"), parse_hhmm(w.stop, "stop"), parse_days(list(w.days), "days")
                )
                for w in model.schedules
            )
            mode = RfidMode(model.rfid)
            state = ChargerAccess(
                rfid=mode,
                operating=mode if mode in _OPERATING else RfidMode.ENABLE_ALL,
                configured=mode,
                switch=SwitchMode(model.switch),
                lock_mode=LockMode(model.lock),
                windows=windows,
                auth_timeout_s=model.authorization_timeout_s,
            )
            state.closed = _DEFAULT_CLOSED.get(state.switch)
            if sim is not None and model.driver == "sim":
                from evpilot.sim.access import SimCardReader, SimLock, SimSwitch

                state.reader = SimCardReader()
                state.switch_input = SimSwitch()
                state.switch_input.contact = state.closed if state.closed is not None else False
                state.last_hw_closed = state.switch_input.contact
                if state.lock_mode is not LockMode.DISABLED:
                    state.actuator = SimLock()
            elif state.lock_mode is not LockMode.DISABLED:
                state.actuator = link_lock(rt.links.get(model.id))
            self.chargers[model.id] = state
            if mode is RfidMode.DELETE_ALL:
                self._delete_all(model.id)
        self._saved: dict[str, dict[str, Any]] = {}
        for cid in self.chargers:
            self._restore(cid)
        self._relay_open(None, None)

    # ---- kept over a restart ------------------------------------------------------------------

    def _state(self, cid: str) -> dict[str, Any]:
        st = self.chargers[cid]
        return {
            "rfid": st.rfid.value,
            "operating": st.operating.value,
            "config": st.configured.value,
            "holder": st.holder,
            "lock": st.lock_setting.value,
        }

    def _save(self, cid: str) -> None:
        """Store the charger's run-time access settings when they changed."""
        state = self._state(cid)
        if self.rt.store is not None and state != self._saved.get(cid):
            self._saved[cid] = state
            self.rt.store.set_setting(_KEY + cid, state, self.rt.clock.now())

    def _restore(self, cid: str) -> None:
        """The stored mode, lock setting and holding card, each dropped alone if no longer valid; the
        mode only while the config's `rfid` is still the one it was stored with (an edit wins)."""
        self._saved[cid] = self._state(cid)
        saved = self.rt.store.get_setting(_KEY + cid) if self.rt.store is not None else None
        if not isinstance(saved, dict):
            return
        st = self.chargers[cid]
        ch = self.rt.engine.chargers[cid]
        same_config = saved.get("config") == st.configured.value
        with contextlib.suppress(CommandError, TypeError, ValueError):
            operating = RfidMode(str(saved.get("operating")))
            if same_config and operating in _OPERATING:
                self._check_rfid(cid, operating.value)
                st.operating = operating
        with contextlib.suppress(CommandError, TypeError, ValueError):
            mode = RfidMode(str(saved.get("rfid")))
            if same_config and mode is not RfidMode.DELETE_ALL:
                self._check_rfid(cid, mode.value)
                st.rfid = mode
        with contextlib.suppress(TypeError, ValueError):
            st.lock_setting = LockSetting(str(saved.get("lock")))
        holder, method = saved.get("holder"), _HOLDING.get(st.rfid)
        held = saved.get("rfid") == st.rfid.value  # a card held in another mode does not carry over
        if isinstance(holder, str) and method is not None and held and ch.config.require_auth:
            with contextlib.suppress(CommandError):
                uid = normalize_uid(holder)
                if method is AuthMethod.REMOTE or uid in self.cards:
                    # As a swipe before plugging in: it lapses if no car arrives in time.
                    ch.set_authorized(True, uid, method.value)
                    st.holder = uid
        self._saved[cid] = self._state(cid)

    # ---- lookups ------------------------------------------------------------------------------

    def of(self, cid: str) -> ChargerAccess:
        """The access state of charger `cid` (UnknownCharger when there is none)."""
        self.rt.charger(cid)
        return self.chargers[cid]

    def remote_available(self) -> bool:
        """An OCPP charge point is configured (rfid: remote sends its cards there)."""
        return self.rt.config.ocpp.url is not None

    # ---- commands: the faces call these, which send typed commands through Runtime.apply -------

    def learn(self, card: Card, origin: str) -> Card:
        """Learn (or replace) a card; refuses a 101st card and unknown chargers."""
        self.rt.apply(
            cmd.LearnCard(card.uid, card.name, card.chargers, card.expires_at, card.energy_kwh), origin
        )
        return self.cards[card.uid]

    def forget(self, uid: str | None, origin: str) -> int:
        """Forget one card (uid) or all (None); returns how many went (nothing is sent for none)."""
        gone = len(self.cards) if uid is None else int(uid in self.cards)
        if gone:
            self.rt.apply(cmd.DeleteCards(uid), origin)
        return gone

    def set_rfid(self, cid: str, mode: str, origin: str) -> RfidMode:
        """Change the RFID mode; `delete_all` erases every card at once and returns to the operating mode."""
        self.rt.apply(cmd.SetRfidMode(cid, mode), origin)
        return self.of(cid).rfid

    def swipe(self, cid: str, raw_uid: str, origin: str) -> SwipeResult:
        """A card presented to charger `cid`'s reader (CommandError for a malformed uid)."""
        uid = normalize_uid(raw_uid)
        self.rt.apply(cmd.Swipe(cid, uid), origin)
        result = self.last_swipe
        assert result is not None and result.uid == uid
        return result

    def set_switch(self, cid: str, closed: bool, origin: str) -> ChargerAccess:
        """The switch input's contact closed or opened (from the API or the hardware).

        The site changes it leads to (the site mode, the grid relay) go in the same batch as their
        own commands, so the log shows them.
        """
        st = self.of(cid)
        batch: list[cmd.Command] = [cmd.SetSwitch(cid, closed)]
        pressed = closed is True and st.closed is not True
        site_mode = self.rt.engine.site.mode
        if st.switch is SwitchMode.SMART_SOLAR_BUTTON and pressed:
            batch.append(cmd.SetSiteMode("solar" if site_mode != "solar" else "smart"))
        elif st.switch is SwitchMode.SMART_SOLAR_SWITCH and isinstance(closed, bool):
            batch.append(cmd.SetSiteMode("solar" if closed else "smart"))
        elif st.switch is SwitchMode.DISABLED and pressed:
            # Seed 001: with SWITCH disabled a push button stops charging.
            batch.append(cmd.Stop(cid))
        relay = self._relay_open(cid, closed)
        if relay is not None and relay != self.rt.engine.grid_relay_open:
            batch.append(cmd.SetGridRelay(relay))
        self.rt.apply(batch, origin)
        return st

    def set_lock(self, cid: str, setting: str, origin: str) -> LockSetting:
        """What the cable lock is told (auto, always, force_unlock)."""
        self.rt.apply(cmd.SetCableLock(cid, setting), origin)
        return self.of(cid).lock_setting

    # ---- the access commands, checked and applied by Runtime.apply -----------------------------

    def check(self, c: cmd.AccessCommand) -> None:
        """Refuse an access command that cannot be applied (CommandError, UnknownCharger)."""
        match c:
            case cmd.Swipe(charger=cid, uid=uid):
                self.of(cid)
                if normalize_uid(uid) != uid:
                    raise CommandError("uid", f"{uid!r} is not normalised (upper-case hex, no separators)")
            case cmd.SetRfidMode(charger=cid, mode=mode):
                self._check_rfid(cid, mode)
            case cmd.SetSwitch(charger=cid, closed=closed):
                self.of(cid)
                if not isinstance(closed, bool):
                    raise CommandError("closed", "must be true or false")
            case cmd.SetCableLock(charger=cid, setting=setting):
                self.of(cid)
                _lock_setting(setting)
            case cmd.LearnCard():
                self._check_card(c)
            case cmd.DeleteCards(uid=uid):
                if uid is not None:
                    normalize_uid(uid)
            case cmd.SetOcppTag(charger=cid, tag=tag, method=method):
                self.of(cid)
                if tag is not None:
                    cmd.check_id_tag(tag)
                    if method not in {m.value for m in AuthMethod}:
                        raise CommandError("method", f"{method!r} is not one of {', '.join(AuthMethod)}")

    def apply(self, c: cmd.AccessCommand, origin: str) -> None:
        """Apply one checked access command."""
        source = event_source(origin)
        match c:
            case cmd.Swipe(charger=cid, uid=uid):
                self.last_swipe = self._swipe(cid, uid, source)
            case cmd.SetRfidMode(charger=cid, mode=mode):
                self._set_rfid(cid, RfidMode(mode), source)
            case cmd.SetSwitch(charger=cid, closed=closed):
                self._set_switch(cid, closed, source)
            case cmd.SetCableLock(charger=cid, setting=setting):
                st = self.chargers[cid]
                st.lock_setting = _lock_setting(setting)
                # OCPP 1.6 UnlockConnector is a new attempt: so is every forced unlock, from any API.
                st.unlock_retry = (
                    st.lock_setting is LockSetting.FORCE_UNLOCK
                    and st.lock.state is LockState.FAULT
                    and st.actuator is not None
                )
                self._emit(self.rt.charger(cid), "lock_setting", st.lock_setting.value, source)
                self._save(cid)
            case cmd.LearnCard():
                card = Card(c.uid, c.name, tuple(c.chargers), c.expires_at, c.energy_kwh)
                self.cards[card.uid] = card
                if self.rt.store is not None:
                    self.rt.store.put_card(card)
            case cmd.DeleteCards(uid=uid):
                self._delete_cards(uid)
            case cmd.SetOcppTag(charger=cid, tag=tag, method=method):
                self._set_tag(cid, tag, method, source)

    # ---- cards --------------------------------------------------------------------------------

    def _check_card(self, c: cmd.LearnCard) -> None:
        if normalize_uid(c.uid) != c.uid:
            raise CommandError("uid", f"{c.uid!r} is not normalised (upper-case hex, no separators)")
        for cid in c.chargers:
            if cid not in self.chargers:
                raise CommandError("chargers", f"no charger {cid!r}")
        if c.uid not in self.cards and len(self.cards) >= MAX_CARDS:
            raise CommandError("uid", f"{MAX_CARDS} cards are stored already: delete one first")

    def _delete_cards(self, uid: str | None) -> int:
        if uid is None:
            gone = len(self.cards)
            self.cards.clear()
        else:
            gone = 1 if self.cards.pop(uid, None) is not None else 0
        if self.rt.store is not None and gone:
            self.rt.store.delete_card(uid)
        return gone

    def _delete_all(self, cid: str) -> None:
        gone = self._delete_cards(None)
        st = self.chargers[cid]
        log.info("%s: rfid delete_all: %d card(s) erased", cid, gone)
        st.rfid = st.operating

    def _check_rfid(self, cid: str, mode: str) -> RfidMode:
        self.of(cid)
        try:
            value = RfidMode(mode)
        except ValueError:
            raise CommandError(
                "mode", f"{mode!r} is not one of {', '.join(m.value for m in RfidMode)}"
            ) from None
        needs_auth = value in _OPERATING and value is not RfidMode.DISABLED
        if needs_auth and not self.rt.charger(cid).config.require_auth:
            raise CommandError(
                "mode", f"charger {cid!r} does not require authorization: set chargers[].rfid in the config"
            )
        return value

    def _set_rfid(self, cid: str, value: RfidMode, source: str) -> None:
        st = self.chargers[cid]
        st.rfid = value
        if value in _OPERATING:
            st.operating = value
        if value is RfidMode.DELETE_ALL:
            self._delete_all(cid)
        self._emit(self.rt.charger(cid), "rfid_mode", st.rfid.value, source)
        self._save(cid)

    # ---- swipes -------------------------------------------------------------------------------

    def _swipe(self, cid: str, uid: str, source: str) -> SwipeResult:
        st = self.chargers[cid]
        ch = self.rt.charger(cid)
        now = self.rt.clock.now()
        if not ch.authorized:
            st.holder = None  # unplugged, lapsed or stopped since
        decision = decide_swipe(
            st.rfid,
            self.cards.get(uid),
            cid,
            now,
            holder=st.holder,
            cards_stored=len(self.cards),
            remote_available=self.remote_available(),
            enabled=ch.authorized,
        )
        action = decision.action
        if action is SwipeAction.LEARN:
            self.cards.setdefault(uid, Card(uid))
            if self.rt.store is not None:
                self.rt.store.put_card(self.cards[uid])
        elif action is SwipeAction.DELETE:
            self._delete_cards(uid)
        elif action in (SwipeAction.AUTHORIZE, SwipeAction.REMOTE):
            method = AuthMethod.CARD if action is SwipeAction.AUTHORIZE else AuthMethod.REMOTE
            ch.set_authorized(True, uid, method.value)
            if ch.paused:
                ch.request_start(now)
            st.holder = uid
            st.authorized_at = now
        elif action is SwipeAction.STOP:
            ch.request_stop(now)
            ch.set_authorized(False)
            st.holder = None
            st.authorized_at = None
        self._emit(
            ch, "swipe", f"{uid} {action.value}" + (f": {decision.reason}" if decision.reason else ""), source
        )
        self._save(cid)
        return SwipeResult(uid, action.value, decision.reason)

    # ---- tags of OCPP wallboxes (evpilot as their backend) ---------------------------------------

    def tag_status(self, chargers: tuple[str, ...], raw_tag: str) -> tuple[TagStatus, float | None]:
        """An OCPP wallbox's Authorize or StartTransaction for `chargers`: the tag's status and, for an
        accepted card with an expiry, when it expires (clock s).

        When one of the chargers does not require authorization any tag is accepted; otherwise only a
        learned, unexpired card allowed on one of them.
        """
        needing = tuple(cid for cid in chargers if self.rt.charger(cid).config.require_auth)
        if len(needing) < len(chargers) or not needing:
            return TagStatus.ACCEPTED, None
        try:
            card = self.cards.get(normalize_uid(raw_tag))
        except CommandError:
            card = None
        status = tag_status(card, needing, self.rt.clock.now())
        return status, card.expires_at if card is not None and status is TagStatus.ACCEPTED else None

    def tag_started(self, cid: str, raw_tag: str, status: TagStatus, remote: bool) -> None:
        """A wallbox started a transaction on charger `cid` with this tag (`remote`: one evpilot sent).

        Accepted, the charger is authorized and its session records the tag and how it was authorized;
        refused, a charger that requires authorization stays held.
        """
        ch = self.rt.charger(cid)
        try:
            tag = normalize_uid(raw_tag)
        except CommandError:
            tag = raw_tag
        if status is not TagStatus.ACCEPTED:
            self._emit(ch, "swipe", f"{tag} refuse: {status.value}", "ocpp")
            return
        if remote:
            method = AuthMethod.API
        elif ch.config.require_auth:
            method = AuthMethod.CARD
        else:
            method = AuthMethod.FREE
        self.rt.apply(cmd.SetOcppTag(cid, tag, method.value), OCPP_ORIGIN)

    def tag_stopped(self, cid: str) -> None:
        """The wallbox ended its transaction: a charger that requires authorization waits for the next."""
        if self.rt.charger(cid).config.require_auth:
            self.rt.apply(cmd.SetOcppTag(cid, None), OCPP_ORIGIN)

    def _set_tag(self, cid: str, tag: str | None, method: str | None, source: str) -> None:
        st = self.chargers[cid]
        ch = self.rt.charger(cid)
        if tag is None:
            ch.set_authorized(False)
            st.holder = st.authorized_at = None
        else:
            ch.set_authorized(True, tag, method)
            if ch.config.require_auth:
                st.holder, st.authorized_at = tag, self.rt.clock.now()
            self._emit(ch, "swipe", f"{tag} authorize", source)
        self._save(cid)

    # ---- switch -------------------------------------------------------------------------------

    def _set_switch(self, cid: str, closed: bool, source: str) -> None:
        st = self.chargers[cid]
        ch = self.rt.charger(cid)
        before = st.closed
        st.closed = closed
        pressed = closed and before is not True
        if st.switch is SwitchMode.ACCESS_BUTTON and pressed:
            st.access_on = not st.access_on
        elif st.switch is SwitchMode.ACCESS_SWITCH:
            st.access_on = closed
        if before != closed:
            self._emit(ch, "switch", "closed" if closed else "open", source)

    def _relay_open(self, cid: str | None, closed: bool | None) -> bool | None:
        """Whether the grid relay is open with charger `cid`'s contact at `closed` (None: no relay
        input). At start (cid None) the runtime takes it as it is."""
        relays = [
            closed if key == cid else st.closed
            for key, st in self.chargers.items()
            if st.switch is SwitchMode.GRID_RELAY
        ]
        if not relays:
            return None
        # The contact follows the relay: open means the operator limits the site to 4.2 kW.
        is_open = any(c is False for c in relays)
        if cid is None:
            self.rt.engine.grid_relay_open = is_open
        return is_open

    # ---- every tick ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Read the access hardware, lapse authorizations, step the locks and hold the caps."""
        for cid, st in self.chargers.items():
            ch = self.rt.engine.chargers[cid]
            if st.reader is not None:
                for raw in st.reader.take():
                    try:
                        self.swipe(cid, raw, READER_ORIGIN)
                    except CommandError as exc:
                        self._emit(ch, "swipe", f"refused: {exc}", READER_ORIGIN)
            if st.switch_input is not None:
                hw = st.switch_input.closed()
                if hw is not None and hw != st.last_hw_closed:
                    st.last_hw_closed = hw
                    self.set_switch(cid, hw, GPIO_ORIGIN)
            if st.lock_setting is LockSetting.FORCE_UNLOCK and not ch.plugged:
                # A forced unlock lasts until the socket is free (Teltonika register 18 back to 0).
                self.rt.apply(cmd.SetCableLock(cid, LockSetting.AUTO.value), LOCK_ORIGIN)
            if (
                st.access_on
                and not ch.config.require_auth
                and st.lock_mode is _NO_LOCK
                and not st.windows
                and not ch.leases
            ):
                continue  # nothing to lapse, lock or hold (the common charger: no time spent on it)
            self._lapse(ch, st, now)
            self._step_lock(ch, st, now)
            self._hold(
                ch,
                SWITCH_SOURCE,
                st.switch in (SwitchMode.ACCESS_BUTTON, SwitchMode.ACCESS_SWITCH) and not st.access_on,
            )
            self._hold(ch, SCHEDULE_SOURCE, bool(st.windows) and not self.window_open(st, now))
            card = self.cards.get(st.holder) if st.holder is not None else None
            over = (
                card is not None
                and card.energy_kwh is not None
                and ch.session is not None
                and ch.session.id_tag == card.uid
                and ch.session.energy_kwh >= card.energy_kwh
            )
            self._hold(ch, CARD_SOURCE, over)

    def _lapse(self, ch: Charger, st: ChargerAccess, now: float) -> None:
        if not ch.config.require_auth:
            return
        cid = ch.config.id
        if ch.plugged or ch.session is not None:
            if st.authorized_at is not None and ch.session is not None:
                st.authorized_at = None  # taken up by a session
            return
        if not ch.authorized:
            st.authorized_at = None
            if st.holder is not None:
                st.holder = None
                self._save(cid)
            return
        if st.authorized_at is None:
            st.authorized_at = now  # authorized by another way (the API): its lapse starts now
        elif now - st.authorized_at >= st.auth_timeout_s:
            self.rt.apply(cmd.Authorize(cid, False), TIMER_ORIGIN)
            st.authorized_at = None
            st.holder = None
            self._save(cid)
            self._emit(ch, "authorization_lapsed", f"no car within {st.auth_timeout_s:g} s", TIMER_ORIGIN)

    def _step_lock(self, ch: Charger, st: ChargerAccess, now: float) -> None:
        if st.lock_mode is LockMode.DISABLED:
            return
        cid = ch.config.id
        want = want_locked(st.lock_setting, ch.plugged, ch.authorized, ch.contactor)
        if st.actuator is None:
            if st.lock.state is not LockState.FAULT:
                st.lock = LockStatus(LockState.FAULT, now, 0, "no lock actuator")
                self._emit(ch, "lock_fault", st.lock.fault, LOCK_ORIGIN)
            self._hold(ch, LOCK_SOURCE, True)
            return
        before = st.lock
        st.sensed = st.actuator.sensed()
        step = step_lock(before, now, want, st.sensed, retry=st.unlock_retry and not want)
        if not want:
            st.unlock_retry = False  # taken (or no longer needed: the fault cleared)
        if step.drive is not None:
            st.actuator.drive(step.drive)
        st.lock = step.status
        if step.status.state is not before.state:
            if step.status.state is LockState.FAULT:
                log.warning("%s: cable lock fault: %s", cid, step.status.fault)
                self.rt.apply(cmd.Stop(cid), LOCK_ORIGIN)
                self._emit(ch, "lock_fault", step.status.fault, LOCK_ORIGIN)
            else:
                self._emit(ch, "lock", step.status.state.value, LOCK_ORIGIN)
        # A forced unlock holds the charger at 0 A first: the lock opens once no current flows.
        unlocking = st.lock_setting is LockSetting.FORCE_UNLOCK
        self._hold(ch, LOCK_SOURCE, unlocking or st.lock.state is not LockState.LOCKED)

    async def force_unlock(self, cid: str, origin: str) -> bool | None:
        """Open the cable lock now (`set_cable_lock` `force_unlock`) and wait for the outcome: True once
        the actuator confirms it open, False on a fault or when it is not open within the lock's
        attempts, None for a charger without a lock (nothing is commanded). A lock in fault is driven
        again with a new set of attempts."""
        st = self.of(cid)
        if st.lock_mode is LockMode.DISABLED:
            return None
        clock = self.rt.clock
        tick_s = self.rt.config.control.tick_s
        # Charging stops first (the car gets STOP_DEADLINE_S before the contactor opens regardless),
        # then every attempt may take the lock's timeout; the state machine's own fault comes first.
        deadline = clock.now() + STOP_DEADLINE_S + LOCK_TIMEOUT_S * LOCK_ATTEMPTS + 3 * tick_s
        self.rt.apply(cmd.SetCableLock(cid, LockSetting.FORCE_UNLOCK.value), origin)
        while True:
            # After a tick at the least: a fault from before the command may clear on its first step.
            await clock.sleep(tick_s / 4)
            if st.lock.state is LockState.UNLOCKED:
                return True
            failed = st.lock.state is LockState.FAULT and not st.unlock_retry
            if failed or clock.now() >= deadline:
                return False

    def locked(self, cid: str) -> bool:
        """The actuator's last feedback says locked (False without a lock or before any feedback)."""
        st = self.of(cid)
        return st.lock_mode is not LockMode.DISABLED and st.sensed is True

    def window_open(self, st: ChargerAccess, now: float) -> bool:
        """One of the charger's weekly windows is open at `now` (local time)."""
        local = now + self.rt.utc_offset(now)
        # 1970-01-01 was a Thursday (weekday 3).
        day = int(local // DAY_S)
        weekday, second = (day + 3) % 7, local - day * DAY_S
        return any(w.open_at(weekday, second) for w in st.windows)

    def _hold(self, ch: Charger, source: str, hold: bool) -> None:
        """Hold the charger at 0 A under lease `source` (a command from origin `source`), or release it."""
        if hold != (source in ch.leases):
            self.rt.apply(cmd.SetLease(ch.config.id, source, 0.0 if hold else None), source)

    def _emit(self, ch: Charger, kind: str, detail: str, source: str) -> None:
        ch.events.append(ev.AccessEvent(ch.config.id, self.rt.clock.now(), kind, detail, source))

    # ---- documents ----------------------------------------------------------------------------

    def doc(self, cid: str) -> dict[str, Any]:
        """The access state of charger `cid` for the APIs."""
        st = self.of(cid)
        ch = self.rt.charger(cid)
        return {
            "rfid": st.rfid.value,
            "switch": {"mode": st.switch.value, "closed": st.closed, "access": st.access_on},
            "lock": {
                "mode": st.lock_mode.value,
                "setting": st.lock_setting.value,
                "state": st.lock.state.value if st.lock_mode is not LockMode.DISABLED else None,
                "locked": self.locked(cid),
                "fault": st.lock.fault or None,
            },
            "authorized": ch.authorized,
            "card": st.holder,
            "schedules": [
                {"start": _hhmm(w.start_s), "stop": _hhmm(w.stop_s), "days": sorted(w.days)}
                for w in st.windows
            ],
            "schedule_open": None if not st.windows else self.window_open(st, self.rt.clock.now()),
        }

    def cards_doc(self) -> list[dict[str, Any]]:
        """Every learned card."""
        return [card_doc(c) for c in sorted(self.cards.values(), key=lambda c: c.uid)]


def link_lock(link: ChargerLink | None) -> LockActuator | None:
    """The cable lock a charger's device offers through its driver, if it offers one."""
    from evpilot.devices.base import LockingLink

    return link.lock_actuator() if isinstance(link, LockingLink) else None


def _lock_setting(setting: str) -> LockSetting:
    try:
        return LockSetting(setting)
    except ValueError:
        raise CommandError(
            "setting", f"{setting!r} is not one of {', '.join(m.value for m in LockSetting)}"
        ) from None


def card_doc(card: Card) -> dict[str, Any]:
    """One card for the API."""
    return {
        "uid": card.uid,
        "name": card.name,
        "chargers": list(card.chargers),
        "expires_at": card.expires_at,
        "energy_kwh": card.energy_kwh,
    }


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"
