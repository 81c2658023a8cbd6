"""`evpilot run --http`: a taken port changes nothing, a bad port says why, IPv6 addresses in brackets."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import evpilot_process


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m evpilot ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "evpilot", *args], capture_output=True, text=True, timeout=60, check=False
    )


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` with a hash of its bytes."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_taken_port_fails_at_once_and_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A previous run left a database behind (a car charging on cp1 gives it a session).
    with evpilot_process(tmp_path, speed=50, data_dir=data) as (base, _proc):
        deadline = time.monotonic() + 30
        while httpx.get(base + "/api/chargers/cp1").json()["session"] is None:
            assert time.monotonic() < deadline, "no session started"
            time.sleep(0.05)
    sessions_db = data / "evpilot.sqlite3"
    assert sessions_db.exists()
    before = snapshot(data)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli("run", "--http", f"127.0.0.1:{port}", "--data-dir", str(data), "--speed", "50")
    assert result.returncode != 0
    assert result.stderr.strip() == f"127.0.0.1:{port} is already in use"
    assert "http://" not in result.stdout + result.stderr
    assert snapshot(data) == before
    # A data dir that did not exist is not created either.
    fresh = tmp_path / "fresh"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli("run", "--http", f"127.0.0.1:{port}", "--data-dir", str(fresh))
    assert result.returncode != 0 and result.stderr.strip() == f"127.0.0.1:{port} is already in use"
    assert not fresh.exists()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:99999", "port 99999 is out of range 0-65535"),
        ("[::1]:65536", "port 65536 is out of range 0-65535"),
        ("127.0.0.1", "expected HOST:PORT, got '127.0.0.1'"),
        ("127.0.0.1:http", "expected HOST:PORT, got '127.0.0.1:http'"),
    ],
)
def test_a_bad_http_address_says_what_is_wrong(address: str, message: str) -> None:
    result = run_cli("run", "--http", address)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"argument --http: {message}")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_the_ipv6_banner_has_brackets(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "evpilot", "run", "--http", "[::1]:0", "--data-dir", str(tmp_path / "d")],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while " on http://" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(15)
    banner = next(line for line in log.read_text().splitlines() if " on http://" in line)
    url = banner.split(" on ", 1)[1].split()[0]
    assert url.startswith("http://[::1]:")
    assert int(url.rsplit(":", 1)[1]) > 0
