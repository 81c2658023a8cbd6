"""No web page can command the charger: Host allow-list (DNS rebinding) and Origin checks (CSRF)."""

from __future__ import annotations

import httpx
import pytest
import websockets

from tests.helpers import make_config, serve

EVIL = "http://evil.example"


async def test_a_foreign_host_name_is_refused_and_changes_nothing() -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        # DNS rebinding: the page's own name resolves to 127.0.0.1, so the Host header carries it.
        r = await c.post("/api/chargers/cp1/stop", headers={"host": "evil.example:8080"})
        assert r.status_code == 400
        assert r.json()["error"] == "bad_host"
        assert not rt.charger("cp1").paused
        r = await c.get("/api/site", headers={"host": "evil.example"})
        assert r.status_code == 400
        # Local names and IP literals stay reachable, with or without a port.
        for host in ("localhost:8080", "127.0.0.1", "[::1]:8080", "192.168.1.20", "evpilot.localhost"):
            r = await c.get("/api/site", headers={"host": host})
            assert r.status_code == 200, host


async def test_allowed_hosts_lets_a_configured_name_in() -> None:
    config = make_config({"http": {"allowed_hosts": ["charger.home.arpa"]}})
    async with serve(config, speed=10) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/api/site", headers={"host": "charger.home.arpa:8080"})
        assert r.status_code == 200
        r = await c.get("/api/site", headers={"host": "other.home.arpa"})
        assert r.status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/api/chargers/cp1/stop", {"content": b"x", "headers": {"content-type": "text/plain"}}),
        ("POST", "/settings?mode=0", {}),
        ("PUT", "/api/chargers/cp1/current_limit", {"json": {"current": 10}}),
    ],
)
async def test_a_cross_origin_state_change_is_refused(
    method: str, path: str, kwargs: dict[str, object]
) -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        headers = {**kwargs.pop("headers", {}), "origin": EVIL}  # type: ignore[dict-item]
        r = await c.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "forbidden_origin"
        ch = rt.charger("cp1")
        assert not ch.paused
        assert ch.user_limit is None
        assert rt.engine.site.mode == "smart"


async def test_fake_mains_readings_from_a_page_are_refused() -> None:
    config = make_config({"site": {"mains_meter": "api"}})
    async with serve(config, speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        before = rt.api_meter.latest()
        r = await c.post("/currents?L1=-500&L2=-500&L3=-500", headers={"origin": EVIL})
        assert r.status_code == 403
        r = await c.put("/api/meters/mains", json={"currents": [-500, -500, -500]}, headers={"origin": EVIL})
        assert r.status_code == 403
        assert rt.api_meter.latest() == before


async def test_same_origin_and_non_browser_clients_may_change_state() -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.put("/api/chargers/cp1/current_limit", json={"current": 10}, headers={"origin": base})
        assert r.status_code == 200, r.text
        assert rt.charger("cp1").user_limit == 10.0
        # curl, Home Assistant, evcc: no Origin header at all.
        r = await c.put("/api/chargers/cp1/current_limit", json={"current": 12})
        assert r.status_code == 200
        assert rt.charger("cp1").user_limit == 12.0


async def test_allowed_origins_lets_a_listed_page_in() -> None:
    config = make_config({"http": {"allowed_origins": ["https://dash.home.arpa"]}})
    async with serve(config, speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/api/chargers/cp1/stop", headers={"origin": "https://dash.home.arpa"})
        assert r.status_code == 200, r.text
        assert rt.charger("cp1").paused
        r = await c.post("/api/chargers/cp1/start", headers={"origin": "https://dash.home.arpa.evil.example"})
        assert r.status_code == 403
        assert rt.charger("cp1").paused


async def test_shelly_set_by_get_from_another_site_is_refused() -> None:
    async with serve(make_config(), speed=10) as (base, rt), httpx.AsyncClient(base_url=base) as c:
        path = "/rpc/Boolean.Set?id=200&value=false"
        # An <img src=...> on another site: no Origin, but the browser marks it cross-site.
        r = await c.get(path, headers={"sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        r = await c.get("/chargers/cp1" + path, headers={"origin": EVIL})
        assert r.status_code == 403
        assert rt.charger("cp1").enabled
        # Reading state from another site stays possible; a same-origin or direct call works.
        assert (await c.get("/api/site", headers={"origin": EVIL})).status_code == 200
        r = await c.get(path)
        assert r.status_code == 200, r.text


async def test_a_cross_origin_websocket_is_refused() -> None:
    async with serve(make_config(), speed=10) as (base, _rt):
        url = base.replace("http://", "ws://") + "/api/ws"
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with websockets.connect(url, origin=EVIL):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        async with websockets.connect(url, origin=base) as ws:  # type: ignore[arg-type]
            assert await ws.recv()
