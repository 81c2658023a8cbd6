"""/docs and /redoc work on a machine with no internet: their assets come from the package."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers import make_config, serve


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_asset_from_evpilot_itself(page: str) -> None:
    async with serve(make_config(), speed=10) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        r = await c.get(page)
        assert r.status_code == 200
        html = r.text
        scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
        styles = re.findall(r'<link[^>]+rel="stylesheet"[^>]*href="([^"]+)"', html)
        styles += re.findall(r'<link[^>]+href="([^"]+)"[^>]*rel="stylesheet"', html)
        assert scripts, html
        for url in scripts + [s for s in styles if "fonts.googleapis.com" not in s]:
            assert url.startswith("/"), f"{page} loads {url} from outside"
            asset = await c.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 10_000, url
        # The document the page renders is served too.
        assert (await c.get("/openapi.json")).status_code == 200


async def test_openapi_has_unique_operation_ids_and_no_warnings() -> None:
    import collections
    import warnings

    async with serve(make_config(), speed=10) as (base, _rt), httpx.AsyncClient(base_url=base) as c:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            doc = (await c.get("/openapi.json")).json()
        ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
        dup = [k for k, n in collections.Counter(ids).items() if n > 1]
        assert not dup
        assert "shelly_rpc_get" in ids and "shelly_rpc_post" in ids
