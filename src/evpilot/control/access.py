"""Access to charging at run time: cards and swipes, the switch input, the cable lock and windows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evpilot.core import events as ev
from evpilot.core.access import (
    MAX_CARDS,
    AuthMethod,
    Card,
    LockMode,
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
)
from evpilot.core.errors import CommandError
from evpilot.core.schedule import DAY_S

if TYPE_CHECKING:
    from evpilot.control.runtime import Runtime
    from evpilot.core.charger import Charger
    from evpilot.devices.base import CardReader, LockActuator, SwitchInput

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


@dataclass(slots=True)
class ChargerAccess:
    """One charger's access state."""

    rfid: RfidMode
    operating: RfidMode
    switch: SwitchMode
    lock_mode: LockMode
    windows: tuple[Window, ...]
    auth_timeout_s: float
    holder: str | None = None
    authorized_at: float | None = None
    lock: LockStatus = field(default_factory=LockStatus)
    closed: bool | None = None
    access_on: bool = True
    reader: CardReader | None = None
    switch_input: SwitchInput | None = None
    actuator: LockActuator | None = None
    last_hw_closed: bool | None = None


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
            self.chargers[model.id] = state
            if mode is RfidMode.DELETE_ALL:
                self._delete_all(model.id)
        self._apply_relay()

    # ---- lookups ------------------------------------------------------------------------------

    def of(self, cid: str) -> ChargerAccess:
        """The access state of charger `cid` (UnknownCharger when there is none)."""
        self.rt.charger(cid)
        return self.chargers[cid]

    def remote_available(self) -> bool:
        """An OCPP charge point is configured (rfid: remote sends its cards there)."""
        return self.rt.config.ocpp.url is not None

    # ---- cards --------------------------------------------------------------------------------

    def add_card(self, card: Card) -> Card:
        """Learn (or replace) a card; refuses a 101st card and unknown chargers."""
        for cid in card.chargers:
            if cid not in self.chargers:
                raise CommandError("chargers", f"no charger {cid!r}")
        if card.uid not in self.cards and len(self.cards) >= MAX_CARDS:
            raise CommandError("uid", f"{MAX_CARDS} cards are stored already: delete one first")
        self.cards[card.uid] = card
        if self.rt.store is not None:
            self.rt.store.put_card(card)
        return card

    def delete_card(self, uid: str | None) -> int:
        """Forget one card (uid) or all (None); returns how many went."""
        if uid is None:
            gone = len(self.cards)
            self.cards.clear()
        else:
            gone = 1 if self.cards.pop(uid, None) is not None else 0
        if self.rt.store is not None and gone:
            self.rt.store.delete_card(uid)
        return gone

    def _delete_all(self, cid: str) -> None:
        gone = self.delete_card(None)
        st = self.chargers[cid]
        log.info("%s: rfid delete_all: %d card(s) erased", cid, gone)
        st.rfid = st.operating

    def set_rfid(self, cid: str, mode: str) -> RfidMode:
        """Change the RFID mode; `delete_all` erases every card at once and returns to the operating mode."""
        st = self.of(cid)
        try:
            value = RfidMode(mode)
        except ValueError:
            raise CommandError(
                "mode", f"{mode!r} is not one of {', '.join(m.value for m in RfidMode)}"
            ) from None
        ch = self.rt.charger(cid)
        if value in _OPERATING and value is not RfidMode.DISABLED and not ch.config.require_auth:
            raise CommandError(
                "mode", f"charger {cid!r} does not require authorization: set chargers[].rfid in the config"
            )
        st.rfid = value
        if value in _OPERATING:
            st.operating = value
        if value is RfidMode.DELETE_ALL:
            self._delete_all(cid)
        self._emit(ch, "rfid_mode", st.rfid.value, "api")
        self.rt.recompute()
        return st.rfid

    # ---- swipes -------------------------------------------------------------------------------

    def swipe(self, cid: str, raw_uid: str, source: str = "api") -> SwipeResult:
        """A card presented to charger `cid`'s reader."""
        st = self.of(cid)
        uid = normalize_uid(raw_uid)
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
        )
        action = decision.action
        if action is SwipeAction.LEARN:
            self.add_card(self.cards.get(uid) or Card(uid))
        elif action is SwipeAction.DELETE:
            self.delete_card(uid)
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
        self.rt.recompute()
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
        st = self.of(cid)
        ch = self.rt.charger(cid)
        now = self.rt.clock.now()
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
        ch.set_authorized(True, tag, method.value)
        if ch.config.require_auth:
            st.holder, st.authorized_at = tag, now
        self._emit(ch, "swipe", f"{tag} authorize", "ocpp")
        self.rt.recompute()

    def tag_stopped(self, cid: str) -> None:
        """The wallbox ended its transaction: a charger that requires authorization waits for the next."""
        st = self.of(cid)
        ch = self.rt.charger(cid)
        if ch.config.require_auth:
            ch.set_authorized(False)
            st.holder = st.authorized_at = None
            self.rt.recompute()

    # ---- switch -------------------------------------------------------------------------------

    def set_switch(self, cid: str, closed: bool, source: str = "api") -> ChargerAccess:
        """The switch input's contact closed or opened (from the API or the hardware)."""
        st = self.of(cid)
        ch = self.rt.charger(cid)
        before = st.closed
        st.closed = closed
        pressed = closed and before is not True
        if st.switch is SwitchMode.ACCESS_BUTTON and pressed:
            st.access_on = not st.access_on
        elif st.switch is SwitchMode.ACCESS_SWITCH:
            st.access_on = closed
        elif st.switch is SwitchMode.SMART_SOLAR_BUTTON and pressed:
            self.rt.set_site_mode("solar" if self.rt.engine.site.mode != "solar" else "smart")
        elif st.switch is SwitchMode.SMART_SOLAR_SWITCH:
            self.rt.set_site_mode("solar" if closed else "smart")
        elif st.switch is SwitchMode.DISABLED and pressed:
            # Seed 001: with SWITCH disabled a push button stops charging.
            ch.request_stop(self.rt.clock.now())
        self._apply_relay()
        if before != closed:
            self._emit(ch, "switch", "closed" if closed else "open", source)
        self.rt.recompute()
        return st

    def _apply_relay(self) -> None:
        relays = [st.closed for st in self.chargers.values() if st.switch is SwitchMode.GRID_RELAY]
        if relays:
            # The contact follows the relay: open means the operator limits the site to 4.2 kW.
            self.rt.engine.grid_relay_open = any(closed is False for closed in relays)

    # ---- every tick ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Read the access hardware, lapse authorizations, step the locks and hold the caps."""
        for cid, st in self.chargers.items():
            ch = self.rt.engine.chargers[cid]
            if st.reader is not None:
                for raw in st.reader.take():
                    try:
                        self.swipe(cid, raw, "reader")
                    except CommandError as exc:
                        self._emit(ch, "swipe", f"refused: {exc}", "reader")
            if st.switch_input is not None:
                hw = st.switch_input.closed()
                if hw is not None and hw != st.last_hw_closed:
                    st.last_hw_closed = hw
                    self.set_switch(cid, hw, "gpio")
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
        if ch.plugged or ch.session is not None:
            if st.authorized_at is not None and ch.session is not None:
                st.authorized_at = None  # taken up by a session
            return
        if not ch.authorized:
            st.authorized_at = None
            st.holder = None
            return
        if st.authorized_at is None:
            st.authorized_at = now  # authorized by another way (the API): its lapse starts now
        elif now - st.authorized_at >= st.auth_timeout_s:
            ch.set_authorized(False)
            st.authorized_at = None
            st.holder = None
            self._emit(ch, "authorization_lapsed", f"no car within {st.auth_timeout_s:g} s", "timer")

    def _step_lock(self, ch: Charger, st: ChargerAccess, now: float) -> None:
        if st.lock_mode is LockMode.DISABLED:
            return
        want = ch.plugged and ch.authorized
        if st.actuator is None:
            if st.lock.state is not LockState.FAULT:
                st.lock = LockStatus(LockState.FAULT, now, 0, "no lock actuator")
                self._emit(ch, "lock_fault", st.lock.fault, "lock")
            self._hold(ch, LOCK_SOURCE, True)
            return
        before = st.lock
        step = step_lock(before, now, want, st.actuator.sensed())
        if step.drive is not None:
            st.actuator.drive(step.drive)
        st.lock = step.status
        if step.status.state is not before.state:
            if step.status.state is LockState.FAULT:
                log.warning("%s: cable lock fault: %s", ch.config.id, step.status.fault)
                ch.request_stop(now)
                self._emit(ch, "lock_fault", step.status.fault, "lock")
            else:
                self._emit(ch, "lock", step.status.state.value, "lock")
        self._hold(ch, LOCK_SOURCE, st.lock.state is not LockState.LOCKED)

    def window_open(self, st: ChargerAccess, now: float) -> bool:
        """One of the charger's weekly windows is open at `now` (local time)."""
        local = now + self.rt.utc_offset(now)
        # 1970-01-01 was a Thursday (weekday 3).
        day = int(local // DAY_S)
        weekday, second = (day + 3) % 7, local - day * DAY_S
        return any(w.open_at(weekday, second) for w in st.windows)

    @staticmethod
    def _hold(ch: Charger, source: str, hold: bool) -> None:
        if hold and source not in ch.leases:
            ch.set_lease(source, 0.0, None)
        elif not hold and source in ch.leases:
            ch.set_lease(source, None, None)

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
                "state": st.lock.state.value if st.lock_mode is not LockMode.DISABLED else None,
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
