"""Native API routes for access to charging: cards, swipes, the RFID mode, the switch input, the lock."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from evpilot.api.edge import Problem, Refusal
from evpilot.api.facade import JsonRoute
from evpilot.api.native import ORIGIN
from evpilot.control.access import card_doc
from evpilot.control.runtime import Runtime
from evpilot.core.access import Card, normalize_uid
from evpilot.core.errors import CommandError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class CardBody(_Body):
    """A card to learn: uid (hex, any case, `:` `-` or spaces allowed) and optional limits."""

    uid: str = Field(min_length=1, max_length=40)
    name: str = Field(default="", max_length=64)
    chargers: list[str] = Field(default_factory=list, max_length=64)
    expires_at: float | None = Field(default=None, ge=0, description="clock seconds; null: never")
    energy_kwh: float | None = Field(default=None, gt=0, le=1000, description="per session; null: none")


class SwipeBody(_Body):
    """A card presented to the charger's reader."""

    uid: str = Field(min_length=1, max_length=40)


class RfidBody(_Body):
    """The RFID mode (disabled, enable_all, enable_one, remote, learn, delete, delete_all)."""

    mode: str = Field(min_length=1, max_length=16)


class SwitchBody(_Body):
    """The switch input's contact: closed (true) or open (false)."""

    closed: bool


class LockFaultBody(_Body):
    """Simulator: the lock actuator jams (true) or moves again (false)."""

    jammed: bool


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CardDoc(_Doc):
    """A learned card."""

    uid: str
    name: str
    chargers: list[str]
    expires_at: float | None
    energy_kwh: float | None


class DeletedDoc(_Doc):
    """How many cards were forgotten."""

    deleted: int


class SwitchDoc(_Doc):
    """The switch input: its mode, its contact (null: not known) and the access it gives."""

    mode: str
    closed: bool | None
    access: bool


class LockDoc(_Doc):
    """The cable lock: mode, setting, state (null without a lock), the feedback and the last fault."""

    mode: str
    setting: str
    state: str | None
    locked: bool
    fault: str | None


class WindowDoc(_Doc):
    """A weekly charging window (days: 0 = Monday)."""

    start: str
    stop: str
    days: list[int]


class AccessDoc(_Doc):
    """A charger's access state."""

    rfid: str
    switch: SwitchDoc
    lock: LockDoc
    authorized: bool
    card: str | None
    schedules: list[WindowDoc]
    schedule_open: bool | None


class SwipeDoc(_Doc):
    """What a swipe did and the charger's access state after it."""

    uid: str
    action: str
    access: AccessDoc


class PresentedDoc(_Doc):
    """The uid held to the simulated reader."""

    presented: str


class ClosedDoc(_Doc):
    """The simulated input's contact."""

    closed: bool


class JammedDoc(_Doc):
    """The simulated lock jams or moves."""

    jammed: bool


def _out(doc: Any, status: int = 200) -> Response:
    return JSONResponse(doc, status_code=status)


def build_router(rt: Runtime) -> APIRouter:
    """The access routes bound to a runtime."""
    r = APIRouter(prefix="/api", route_class=JsonRoute)
    acc = rt.access

    @r.get(
        "/cards",
        tags=["access"],
        summary="The learned RFID cards (at most 100)",
        response_model=list[CardDoc],
    )
    async def get_cards() -> Response:
        return _out(acc.cards_doc())

    @r.post(
        "/cards",
        tags=["access"],
        summary="Learn (or replace) a card",
        status_code=201,
        response_model=CardDoc,
    )
    async def post_card(body: CardBody) -> Response:
        card = Card(
            normalize_uid(body.uid),
            body.name,
            tuple(dict.fromkeys(body.chargers)),
            body.expires_at,
            body.energy_kwh,
        )
        return _out(card_doc(acc.learn(card, ORIGIN)), 201)

    @r.get("/cards/{uid}", tags=["access"], summary="One learned card", response_model=CardDoc)
    async def get_card(uid: str) -> Response:
        card = acc.cards.get(normalize_uid(uid))
        if card is None:
            return Refusal(404, "not_found", [Problem("uid", f"no card {uid!r}")]).response()
        return _out(card_doc(card))

    @r.delete("/cards/{uid}", tags=["access"], summary="Forget a card", response_model=DeletedDoc)
    async def delete_card(uid: str) -> Response:
        key = normalize_uid(uid)
        if not acc.forget(key, ORIGIN):
            return Refusal(404, "not_found", [Problem("uid", f"no card {uid!r}")]).response()
        return _out({"deleted": 1})

    @r.delete("/cards", tags=["access"], summary="Forget every card", response_model=DeletedDoc)
    async def delete_cards() -> Response:
        return _out({"deleted": acc.forget(None, ORIGIN)})

    @r.get(
        "/chargers/{cid}/access",
        tags=["access"],
        summary="RFID mode, switch, lock, card and windows",
        response_model=AccessDoc,
    )
    async def get_access(cid: str) -> Response:
        return _out(acc.doc(cid))

    @r.post(
        "/chargers/{cid}/swipe",
        tags=["access"],
        summary="Present a card to the charger's reader",
        response_model=SwipeDoc,
    )
    async def swipe(cid: str, body: SwipeBody) -> Response:
        result = acc.swipe(cid, body.uid, ORIGIN)
        doc = {"uid": result.uid, "action": result.action, "access": acc.doc(cid)}
        if result.action == "refuse":
            problem = Problem("uid", result.reason)
            refusal = Refusal(403, "refused", [problem])
            return refusal.response()
        return _out(doc)

    @r.put(
        "/chargers/{cid}/rfid",
        tags=["access"],
        summary="Set the RFID mode (learning modes too)",
        response_model=AccessDoc,
    )
    async def put_rfid(cid: str, body: RfidBody) -> Response:
        acc.set_rfid(cid, body.mode, ORIGIN)
        return _out(acc.doc(cid))

    @r.put(
        "/chargers/{cid}/switch",
        tags=["access"],
        summary="Set the switch input's contact",
        response_model=AccessDoc,
    )
    async def put_switch(cid: str, body: SwitchBody) -> Response:
        acc.set_switch(cid, body.closed, ORIGIN)
        return _out(acc.doc(cid))

    def sim_hw(cid: str) -> Any:
        st = acc.of(cid)
        if rt.sim is None or st.reader is None:
            raise CommandError("sim", "the simulator is not running (or the charger is not simulated)")
        return st

    @r.post(
        "/sim/chargers/{cid}/card",
        tags=["simulator"],
        summary="Hold a card to the simulated reader",
        response_model=PresentedDoc,
    )
    async def sim_card(cid: str, body: SwipeBody) -> Response:
        sim_hw(cid).reader.present(body.uid)
        rt.recompute()
        return _out({"presented": body.uid})

    @r.put(
        "/sim/chargers/{cid}/switch",
        tags=["simulator"],
        summary="Close or open the simulated input",
        response_model=ClosedDoc,
    )
    async def sim_switch(cid: str, body: SwitchBody) -> Response:
        sim_hw(cid).switch_input.contact = body.closed
        rt.recompute()
        return _out({"closed": body.closed})

    @r.put(
        "/sim/chargers/{cid}/lock",
        tags=["simulator"],
        summary="Jam or free the simulated lock",
        response_model=JammedDoc,
    )
    async def sim_lock(cid: str, body: LockFaultBody) -> Response:
        st = sim_hw(cid)
        if st.actuator is None:
            raise CommandError("lock", f"charger {cid!r} has no cable lock (lock: disabled)")
        st.actuator.jammed = body.jammed
        rt.recompute()
        return _out({"jammed": body.jammed})

    return r
