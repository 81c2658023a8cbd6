"""Shared test helpers: free ports, evpilot as a subprocess, an in-process server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from evpilot.api.app import create_app
from evpilot.api.server import server_config
from evpilot.config import AppConfig, parse_config
from evpilot.control.clock import ScaledClock
from evpilot.control.runtime import Runtime
from evpilot.store.sqlite import Store

# Seed 002's `/api/v1/charging` fields, exactly.
CHARGING_FIELDS = {
    "voltage",
    "amperage",
    "allocatedAmperage",
    "commandedAmperage",
    "availableAmperage",
    "signaledAmperage",
    "frequency",
    "energyImported",
    "lastActivePower",
}


async def poll(client: httpx.AsyncClient, path: str, ok: Any, tries: int = 300) -> dict[str, Any]:
    """GET `path` until `ok(doc)` and return that document; fails the test if it never holds."""
    doc: dict[str, Any] = {}
    for _ in range(tries):
        doc = (await client.get(path)).json()
        if ok(doc):
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"GET {path}: condition not met after {tries} tries; last document: {doc}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a YAML config file."""
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@contextlib.contextmanager
def evpilot_process(
    tmp: Path,
    config: dict[str, Any] | None = None,
    speed: float = 1.0,
    extra: list[str] | None = None,
    data_dir: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run `evpilot run` as a subprocess on a free port; yields (base URL, process)."""
    port = free_port()
    args = [sys.executable, "-m", "evpilot", "run", "--http", f"127.0.0.1:{port}", "--speed", str(speed)]
    args += ["--data-dir", str(data_dir or tmp / "data")]
    if config is not None:
        args += ["--config", str(write_config(tmp / f"config-{port}.yaml", config))]
    args += extra or []
    log = open(tmp / f"evpilot-{port}.log", "w+", encoding="utf-8")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"evpilot exited with {proc.returncode}:\n{log.read()}")
            try:
                if httpx.get(base + "/api/site", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("evpilot did not answer within 30 s")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def make_config(data: dict[str, Any] | None = None) -> AppConfig:
    """A validated config from a dict (defaults: the simulated home)."""
    return parse_config(data or {})


@contextlib.asynccontextmanager
async def serve(
    config: AppConfig, speed: float = 1.0, store: Store | None = None, clock: ScaledClock | None = None
) -> AsyncIterator[tuple[str, Runtime]]:
    """Run a runtime and its HTTP app in this event loop on a port of its own; yields (base URL, runtime)."""
    rt = Runtime(config, clock or ScaledClock(speed), store)
    app = create_app(rt)
    # Port 0: the listening socket gets a free port and keeps it (no window for another test to take it).
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield f"http://127.0.0.1:{port}", rt
    finally:
        server.should_exit = True
        await task


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in `tmp`: (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
