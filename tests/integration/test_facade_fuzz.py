"""Schemathesis fuzzes every device-facade operation of the OpenAPI document: never a 5xx."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.helpers import evpilot_process

# The ESP32-EVSE, SmartEVSE and SECC operations, at the root and per charger.
FACADE = re.compile(r"^(/chargers/\{cid\})?(/api/v1/|/settings$|/currents$|/ev_meter$)")
EXAMPLES = 12


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    config = {"chargers": [{"id": "cp1"}, {"id": "cp2"}], "site": {"mains_meter": "api"}}
    with evpilot_process(tmp, config, speed=5) as (url, _proc):
        yield url


def test_no_operation_answers_with_a_server_error(base: str) -> None:
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    facade = [op for op in operations if FACADE.match(op.path)]
    assert len(facade) >= 30
    session = requests.Session()
    failures: list[str] = []
    statuses: list[int] = []
    for op in facade:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=base, session=session, timeout=10)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )

        run()
    assert not failures, "\n".join(failures[:10])
    assert len(statuses) >= 3 * len(facade)
    assert {200, 400, 404} <= set(statuses)
    # The server is still healthy after the barrage.
    assert session.get(base + "/api/v1/state", timeout=10).status_code == 200
