"""The dashboard at `/` in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, WebSocketRoute, async_playwright, expect

from evpilot.core.session import SessionRecord
from evpilot.security import hash_password
from evpilot.store.sqlite import Store
from tests.helpers import make_config, serve

CHROMIUM = os.environ.get("EVPILOT_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 5000
# A login verifies an argon2 hash (tens of MB of memory work): slow on a loaded machine.
LOGIN_WAIT_MS = 20000


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


async def _open(browser: Browser, base: str, width: int = 1280, live: bool = True) -> tuple[Page, list[str]]:
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
    if live:
        await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
        await expect(page.locator('#c-cp1 [data-field="state"]')).not_to_have_text("", timeout=WAIT_MS)
    else:
        await expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
    assert errors == []
    return page, external


async def _settings(client: httpx.AsyncClient) -> dict[str, Any]:
    doc = (await client.get("/api/settings")).json()
    return {k: v for k, v in doc.items() if k != "speed"}


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
    # Half an hour of history three days ago, for the chart of a chosen day.
    day = (int(time.time()) // 86400 - 3) * 86400
    for i in range(30):
        row = {"mains_l1": 7.0, "mains_l2": 6.0, "mains_l3": 5.0, "mains_limit": 40.0}
        store.add_history(day + 10 * 3600 + 60 * i, row)
    day_text = time.strftime("%Y-%m-%d", time.gmtime(day))
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

            # A chosen day: its own window, with exactly the seeded points (4 series × 30 minutes).
            await page.locator('[data-action="history-day"]').fill(day_text)
            await expect(page.locator('[data-field="history-title"]')).to_have_text(f"{day_text} (UTC)")
            await expect(page.locator("#charts")).to_have_attribute(
                "data-window", f"{day}-{day + 86400}", timeout=WAIT_MS
            )
            assert await page.locator("#chart-mains").get_attribute("data-points") == "120"
            assert await page.locator("#chart-chargers").get_attribute("data-points") == "0"
            await page.locator('[data-action="history-last24"]').click()
            await expect(page.locator('[data-field="history-title"]')).to_have_text("Last 24 h")
            await expect(page.locator("#charts")).not_to_have_attribute(
                "data-window", f"{day}-{day + 86400}", timeout=WAIT_MS
            )
            assert int(await page.locator("#chart-chargers").get_attribute("data-points") or 0) >= 3

            # Sessions: the table, its filters and the CSV link with the same filters.
            await expect(page.locator('[data-field="sessions"] tr[data-session="s-b"]')).to_have_count(1)
            await expect(page.locator('[data-field="totals"]')).to_contain_text("2026-01-02")
            month = page.locator('[data-field="totals-month"] tr[data-period="2026-01"]')
            await expect(month.locator("td")).to_have_text(["2026-01", "2", "7.50"])
            await page.locator('#session-filters input[name="card"]').fill("card-b")
            await page.locator('#session-filters input[name="to"]').fill("2026-01-02")
            await page.locator("#session-filters button").click()
            await expect(page.locator('[data-field="sessions"] tr')).to_have_count(1)
            await expect(month.locator("td")).to_have_text(["2026-01", "1", "2.50"])
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
            for _ in range(WAIT_MS // 50):  # the API call may take a while on a loaded machine
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

            # Settings: changed values reach the API; a refused one shows the API's error in place and
            # changes none of the values sent with it.
            settings = page.locator("#settings")
            await expect(settings).to_be_visible()
            await settings.locator('[data-charger="cp1"][data-setting="max_current"]').fill("20")
            await settings.locator('[data-setting="solar.start_current"]').fill("8")
            await settings.locator('[data-setting="circuit"][data-circuit="garage"]').fill("24")
            await settings.locator('[data-action="settings"]').click()
            await expect(settings.locator('[data-field="settings-state"]')).to_contain_text(
                "saved", timeout=WAIT_MS
            )
            s = await _settings(client)
            assert s["chargers"]["cp1"]["max_current"] == 20 and s["solar"]["start_current"] == 8
            assert s["circuits"][0]["limit"] == 24
            await settings.locator('[data-setting="mode"]').select_option("normal")
            await settings.locator('[data-setting="mains_limit"]').fill("5")
            await settings.locator('[data-charger="cp2"][data-setting="priority"]').fill("4")
            await settings.locator('[data-action="settings"]').click()
            await expect(settings.locator('[data-field="settings-error"]')).to_have_text(
                "mains_limit: 5 A is out of range (allowed 10 to 200 A)", timeout=WAIT_MS
            )
            assert await _settings(client) == s
            await settings.locator('[data-setting="mains_limit"]').fill("40")
            await settings.locator('[data-charger="cp1"][data-setting="min_current"]').fill("17")
            await settings.locator('[data-action="settings"]').click()
            await expect(settings.locator('[data-field="settings-error"]')).to_have_text(
                "min_current: 17 A is out of range (allowed 6 to 16 A)", timeout=WAIT_MS
            )
            assert await _settings(client) == s
            await settings.locator('[data-action="settings-reset"]').click()
            await expect(settings.locator('[data-field="settings-error"]')).to_have_text("")
            await expect(settings.locator('[data-setting="mains_limit"]')).to_have_value("40")

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


async def _login(page: Page, name: str, password: str) -> None:
    await page.locator("#login-name").fill(name)
    await page.locator("#login-password").fill(password)
    await page.locator('[data-action="login"]').click()


async def test_login_keeps_a_session_token_and_the_role_decides_the_controls(
    browser: Browser, tmp_path: Path
) -> None:
    """viewer: no controls; operator: charger controls; admin: settings too; the server still decides."""
    password = "correct horse"
    users = [
        {"name": r, "password_hash": hash_password(password), "role": r}
        for r in ("viewer", "operator", "admin")
    ]
    config = make_config({"auth": {"users": users}, "chargers": [{"id": "cp1"}]})
    admin_auth = httpx.BasicAuth("admin", password)
    async with (
        serve(config, speed=1) as (base, _rt),
        httpx.AsyncClient(base_url=base, auth=admin_auth) as client,
    ):
        page, external = await _open(browser, base, width=390, live=False)
        await expect(page.locator("#conn")).to_have_text("log in to see the site")
        await expect(page.locator("main")).to_be_hidden()
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        shots = Path(os.environ.get("EVPILOT_SCREENSHOTS", tmp_path))
        await page.screenshot(path=str(shots / "dashboard-login.png"), full_page=True)

        await _login(page, "viewer", "wrong")
        await expect(page.locator('[data-field="login-error"]')).to_have_text(
            "bad name or password", timeout=LOGIN_WAIT_MS
        )
        await expect(page.locator("main")).to_be_hidden()

        # viewer: the site and the charger, through the socket too, but no control and no settings.
        await _login(page, "viewer", password)
        await expect(page.locator("#conn")).to_have_text("live", timeout=LOGIN_WAIT_MS)
        card = page.locator("#c-cp1")
        await expect(card.locator('[data-field="state"]')).not_to_have_text("", timeout=WAIT_MS)
        await expect(card.locator('[data-action="start"]')).to_be_hidden()
        await expect(card.locator('[data-action="mode"]')).to_be_hidden()
        await expect(page.locator("#settings")).to_be_hidden()
        await expect(page.locator('[data-field="user"]')).to_have_text("viewer (viewer)")
        # The CSV export goes with the token too (a plain link would meet the password dialog).
        async with page.expect_download() as download_info:
            await page.locator('[data-field="sessions-csv"]').click()
        download = await download_info.value
        assert download.suggested_filename == "sessions.csv"
        csv_text = Path(await download.path()).read_text()
        assert csv_text.startswith("id,charger_id,card,started_at")
        token = await page.evaluate("sessionStorage.getItem('evpilot.token')")
        bearer = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base) as anon:
            # The server decides, not the page: the viewer's token reads but may not command.
            assert (await anon.get("/api/chargers/cp1", headers=bearer)).status_code == 200
            assert (await anon.post("/api/chargers/cp1/stop", headers=bearer)).status_code == 403
            # The token is kept for the browser session: a reload stays logged in.
            await page.reload()
            await expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
            await expect(page.locator("#login")).to_be_hidden()
            await page.locator('[data-action="logout"]').click()
            await expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator('[data-field="login-error"]')).to_have_text("logged out")
            assert await page.evaluate("sessionStorage.getItem('evpilot.token')") is None
            assert (await anon.get("/api/chargers/cp1", headers=bearer)).status_code == 401

        # operator: start and stop, but no settings.
        await _login(page, "operator", password)
        await expect(page.locator("#conn")).to_have_text("live", timeout=LOGIN_WAIT_MS)
        card = page.locator("#c-cp1")
        await expect(page.locator("#settings")).to_be_hidden()
        await card.locator('[data-action="stop"]').click()
        await expect(card.locator('[data-field="state"]')).to_have_text("Paused", timeout=WAIT_MS)
        assert (await _charger(client))["work_state"] == "charger_pause"
        await card.locator('[data-action="start"]').click()
        await expect(card.locator('[data-field="state"]')).not_to_have_text("Paused", timeout=WAIT_MS)
        assert (await _charger(client))["start_requested"] is True
        await page.locator('[data-action="logout"]').click()

        # admin: settings too; a refused value shows the API's error and changes nothing.
        await _login(page, "admin", password)
        await expect(page.locator("#conn")).to_have_text("live", timeout=LOGIN_WAIT_MS)
        settings = page.locator("#settings")
        await expect(settings).to_be_visible()
        await expect(page.locator('#c-cp1 [data-action="start"]')).to_be_visible()
        await settings.locator('[data-charger="cp1"][data-setting="priority"]').fill("3")
        await settings.locator('[data-action="settings"]').click()
        await expect(settings.locator('[data-field="settings-state"]')).to_contain_text(
            "saved", timeout=WAIT_MS
        )
        before = await _settings(client)
        assert before["chargers"]["cp1"]["priority"] == 3
        await settings.locator('[data-charger="cp1"][data-setting="priority"]').fill("12")
        await settings.locator('[data-action="settings"]').click()
        await expect(settings.locator('[data-field="settings-error"]')).to_have_text(
            "priority: 12 is out of range (allowed 0 to 9)", timeout=WAIT_MS
        )
        assert await _settings(client) == before

        # A login that ended elsewhere: the next call answers 401 and the page asks to log in again.
        token = await page.evaluate("sessionStorage.getItem('evpilot.token')")
        async with httpx.AsyncClient(base_url=base) as anon:
            ended = await anon.post("/api/logout", headers={"authorization": f"Bearer {token}"})
            assert ended.json() == {"ended": True}
        await page.locator('#c-cp1 [data-action="stop"]').click()
        await expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator('[data-field="login-error"]')).to_have_text(
            "your login has ended: log in again"
        )
        await expect(page.locator("main")).to_be_hidden()
        assert (await _charger(client))["start_requested"] is True
        assert external == []
