"""The dashboard at `/` in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, WebSocketRoute, async_playwright, expect

from evpilot.core.session import SessionRecord
from evpilot.store.sqlite import Store
from tests.helpers import make_config, serve

CHROMIUM = os.environ.get("EVPILOT_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 5000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium (CI installs it; a missing one fails the test, it is not skipped)."""
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if path is None:
        pytest.fail(
            f"chromium is not installed (looked for {CHROMIUM}); install it: apt-get install -y chromium"
        )
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            await b.close()


async def _open(browser: Browser, base: str, width: int = 1280) -> tuple[Page, list[str]]:
    """A page on the dashboard that refuses (and records) every request off the server's origin."""
    page = await browser.new_page(viewport={"width": width, "height": 900})
    external: list[str] = []

    async def gate(route: Route) -> None:
        if route.request.url.startswith(base + "/") or route.request.url == base:
            await route.continue_()
        else:
            external.append(route.request.url)
            await route.abort()

    await page.route("**/*", gate)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(base + "/")
    await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator('#c-cp1 [data-field="state"]')).not_to_have_text("", timeout=WAIT_MS)
    assert errors == []
    return page, external


async def _charger(client: httpx.AsyncClient, cid: str = "cp1") -> dict[str, Any]:
    return (await client.get(f"/api/chargers/{cid}")).json()  # type: ignore[no-any-return]


async def test_the_dashboard_is_live_controllable_and_self_contained(
    browser: Browser, tmp_path: Path
) -> None:
    config = make_config(
        {
            "site": {"mains_limit": 40, "circuits": [{"name": "garage", "limit": 25}]},
            "chargers": [{"id": "cp1", "circuit": "garage"}, {"id": "cp2", "circuit": "garage"}],
        }
    )
    store = Store(tmp_path / "db.sqlite3")
    jan1 = 1767225600.0  # 2026-01-01T00:00:00Z
    store.add_session(SessionRecord("s-a", "cp1", jan1, jan1 + 3600, 5.0, 7000.0, "user", "card-a"))
    store.add_session(SessionRecord("s-b", "cp2", jan1 + 86400, jan1 + 90000, 2.5, 7000.0, "user", "card-b"))
    try:
        async with (
            serve(config, speed=60, store=store) as (base, rt),
            httpx.AsyncClient(base_url=base) as client,
        ):
            # A few clock minutes of history first, so the charts have points to draw.
            start = rt.clock.now()
            while rt.clock.now() < start + 4 * 60:
                await asyncio.sleep(0.05)
            page, external = await _open(browser, base)

            # Site, circuit tree and charts.
            await expect(page.locator('#circuits [data-circuit="garage"]')).to_contain_text("25 A")
            await expect(page.locator("#mains .bar")).to_have_count(3)
            await expect(page.locator("#chart-mains path[data-series=mains_l1]")).to_have_count(1)
            assert int(await page.locator("#chart-mains").get_attribute("data-points") or 0) >= 3
            assert int(await page.locator("#chart-chargers").get_attribute("data-points") or 0) >= 3

            # Sessions: the table, its filters and the CSV link with the same filters.
            await expect(page.locator('[data-field="sessions"] tr[data-session="s-b"]')).to_have_count(1)
            await expect(page.locator('[data-field="totals"]')).to_contain_text("2026-01-02")
            await page.locator('#session-filters input[name="card"]').fill("card-b")
            await page.locator('#session-filters input[name="to"]').fill("2026-01-02")
            await page.locator("#session-filters button").click()
            await expect(page.locator('[data-field="sessions"] tr')).to_have_count(1)
            href = await page.locator('[data-field="sessions-csv"]').get_attribute("href")
            assert href == "/api/sessions.csv?card=card-b&to=2026-01-03"
            exported = (await client.get(href)).text.splitlines()
            assert len(exported) == 2 and exported[1].startswith("s-b,cp2,card-b,")

            # Live values come through the WebSocket.
            assert (await client.put("/api/sim/pv", json={"power_w": 4321})).status_code == 200
            await expect(page.locator('[data-field="pv_w"]')).to_have_text("4.32 kW", timeout=WAIT_MS)

            # Why the charger gets what it gets: the binding limit, its value and a reason.
            await expect(page.locator('#c-cp1 [data-field="limit"]')).not_to_have_text("")

            # Current limit: a valid value reaches the API; an invalid one shows its error, changes nothing.
            card = page.locator("#c-cp1")
            await card.locator('[data-field="current-input"]').fill("10.5")
            await card.locator('[data-action="current"]').click()
            await expect(card.locator('[data-field="error"]')).to_have_text("")
            for _ in range(50):
                if (await _charger(client))["limits"]["user"] == 10.5:
                    break
                await asyncio.sleep(0.05)
            assert (await _charger(client))["limits"]["user"] == 10.5
            await card.locator('[data-field="current-input"]').fill("99")
            await card.locator('[data-action="current"]').click()
            await expect(card.locator('[data-field="error"]')).to_contain_text("current", timeout=WAIT_MS)
            assert (await _charger(client))["limits"]["user"] == 10.5

            # Session caps: taken by the API; an out-of-range one is refused in place.
            await card.locator('[data-field="cap-energy"]').fill("20")
            await card.locator('[data-action="caps"]').click()
            await expect(card.locator('[data-field="caps"]')).to_contain_text("20 kWh", timeout=WAIT_MS)
            assert (await _charger(client))["caps"]["energy_kwh"] == 20
            await card.locator('[data-field="cap-energy"]').fill("5000")
            await card.locator('[data-action="caps"]').click()
            await expect(card.locator('[data-field="error"]')).to_contain_text("energy_kwh", timeout=WAIT_MS)
            assert (await _charger(client))["caps"]["energy_kwh"] == 20

            # Stop and start: the API reflects them and the page shows the new state in words.
            await card.locator('[data-action="stop"]').click()
            await expect(card.locator('[data-field="state"]')).to_have_text("Paused", timeout=WAIT_MS)
            assert (await _charger(client))["work_state"] == "charger_pause"
            await card.locator('[data-action="start"]').click()
            await expect(card.locator('[data-field="state"]')).not_to_have_text("Paused", timeout=WAIT_MS)
            assert (await _charger(client))["start_requested"] is True

            # Mode select.
            await card.locator('[data-action="mode"]').select_option("solar")
            await expect(card.locator('[data-field="mode"]')).to_contain_text("solar", timeout=WAIT_MS)
            assert (await _charger(client))["mode_setting"] == "solar"

            shots = Path(os.environ.get("EVPILOT_SCREENSHOTS", tmp_path))
            await page.screenshot(path=str(shots / "dashboard-desktop.png"), full_page=True)

            # The phone layout: nothing wider than the screen.
            await page.set_viewport_size({"width": 390, "height": 844})
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0
            await page.screenshot(path=str(shots / "dashboard-phone.png"), full_page=True)
            assert external == []
    finally:
        store.close()


async def test_a_lost_websocket_is_reported_and_reconnected(browser: Browser) -> None:
    """The socket closes from the server's side and new ones are refused for a while; then it comes back."""
    async with serve(make_config(), speed=1) as (base, _rt), httpx.AsyncClient(base_url=base) as client:
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        sockets: list[WebSocketRoute] = []
        refused: list[str] = []
        down = False

        async def gate(ws: WebSocketRoute) -> None:
            if down:
                refused.append(ws.url)
                await ws.close(code=1011, reason="server away")
                return
            ws.connect_to_server()
            sockets.append(ws)

        await page.route_web_socket("**/api/ws", gate)
        await page.goto(base + "/")
        await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
        down = True
        for ws in sockets:
            await ws.close(code=1012, reason="restart")
        await expect(page.locator("#conn")).to_have_text("connection lost, reconnecting…", timeout=WAIT_MS)
        while len(refused) < 2:  # it keeps trying, and keeps saying so
            await asyncio.sleep(0.05)
        await expect(page.locator("#conn")).to_have_text("connection lost, reconnecting…")
        down = False
        await expect(page.locator("#conn")).to_have_text("live (reconnected)", timeout=WAIT_MS)
        assert (await client.put("/api/sim/pv", json={"power_w": 2500})).status_code == 200
        await expect(page.locator('[data-field="pv_w"]')).to_have_text("2.50 kW", timeout=WAIT_MS)
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
