"""The `evpilot` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import platformdirs

from evpilot import __version__
from evpilot.config import AppConfig, ConfigError, json_schema, load_config, parse_mqtt_url
from evpilot.devices.registry import unavailable


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port {int(port)} is out of range 0-65535")
    return host.strip("[]") or "127.0.0.1", int(port)


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a number, got {text!r}") from None
    if not 0 < value <= 100_000:
        raise argparse.ArgumentTypeError("speed must be > 0 and <= 100000")
    return value


def _mqtt_url(text: str) -> str:
    try:
        parse_mqtt_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog="evpilot", description="Smart-charging controller for EVs.")
    p.add_argument("--version", action="version", version=f"evpilot {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the controller (a simulated home when no config is given)")
    run.add_argument("--config", type=Path, help="YAML config file")
    run.add_argument("--data-dir", type=Path, help="where the SQLite database lives")
    run.add_argument("--http", type=_host_port, help="HOST:PORT to serve on (default 127.0.0.1:8080)")
    run.add_argument("--speed", type=_speed, default=1.0, help="simulation speed factor (default 1)")
    run.add_argument(
        "--mqtt", type=_mqtt_url, metavar="URL", help="MQTT broker: mqtt[s]://[user:password@]host[:port]"
    )
    run.add_argument(
        "--modbus",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve Modbus TCP (config `modbus`) on HOST:PORT",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    cfg = sub.add_parser("config", help="check a config file or print its schema")
    csub = cfg.add_subparsers(dest="config_cmd", required=True)
    check = csub.add_parser("check", help="validate a config file and print each error with its key")
    check.add_argument("file", type=Path)
    csub.add_parser("schema", help="print the JSON schema of the config file")
    auth = sub.add_parser("auth", help="password hashes and API tokens")
    asub = auth.add_subparsers(dest="auth_cmd", required=True)
    asub.add_parser("hash", help="hash a password (read from the terminal or stdin) for auth.users")
    token = asub.add_parser("token", help="create, list or revoke API tokens (kept hashed in the store)")
    tsub = token.add_subparsers(dest="token_cmd", required=True)
    create = tsub.add_parser("create", help="create a token and print it (shown only once)")
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    create.add_argument("--name", default="", help="what the token is for (shown by list)")
    tsub.add_parser("list", help="list the tokens (id, role, name, created)")
    revoke = tsub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id")
    for tp in tsub.choices.values():
        tp.add_argument("--data-dir", type=Path, help="where the SQLite database lives")
    from evpilot.devices.modbus.tool import add_parsers as add_meter_parsers

    add_meter_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `evpilot` command."""
    args = parser().parse_args(argv)
    if args.cmd == "meters":
        from evpilot.devices.modbus.tool import main as meters_main

        return meters_main(args)
    if args.cmd == "auth":
        return auth_main(args)
    if args.cmd == "config":
        if args.config_cmd == "schema":
            print(json_schema())
            return 0
        try:
            checked = load_config(args.file)
        except ConfigError as exc:
            for key, msg in exc.errors:
                print(f"{args.file}: {key}: {msg}", file=sys.stderr)
            return 1
        missing = unavailable(checked)
        for key, msg in missing:
            print(f"{args.file}: {key}: {msg}", file=sys.stderr)
        if missing:
            return 1
        print(f"{args.file}: ok")
        return 0
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for key, msg in exc.errors:
            print(f"config error: {key}: {msg}", file=sys.stderr)
        return 2
    missing = unavailable(config)
    for key, msg in missing:
        print(f"config error: {key}: {msg}", file=sys.stderr)
    if missing:
        return 2
    if args.mqtt:
        config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"url": args.mqtt})})
    if args.modbus:
        host, port = args.modbus
        modbus = config.modbus.model_copy(update={"host": host, "port": port, "serial": None})
        config = config.model_copy(update={"modbus": modbus})
    return run(config, args.data_dir, args.http, args.speed)


def auth_main(args: argparse.Namespace) -> int:
    """`evpilot auth hash` and `evpilot auth token create|list|revoke`."""
    from evpilot.api.auth import new_token
    from evpilot.config import Role
    from evpilot.security import hash_password

    if args.auth_cmd == "hash":
        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                print("the passwords differ", file=sys.stderr)
                return 1
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("empty password", file=sys.stderr)
            return 1
        print(hash_password(password))
        return 0
    import time

    from evpilot.store.sqlite import Store

    store = Store(_data_dir(args.data_dir) / "evpilot.sqlite3")
    try:
        if args.token_cmd == "create":
            token, record, secret_hash = new_token(Role(args.role), args.name, time.time())
            store.add_token(record, secret_hash)
            print(token)
            print(f"token {record.id} ({record.role}) created; it is not shown again", file=sys.stderr)
        elif args.token_cmd == "list":
            for t in store.tokens():
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created_at))
                print(f"{t.id}\t{t.role}\t{created}\t{t.name}")
        elif not store.revoke_token(args.id):
            print(f"no token {args.id!r}", file=sys.stderr)
            return 1
        else:
            print(f"token {args.id} revoked", file=sys.stderr)
    finally:
        store.close()
    return 0


def exposure_warning(config: AppConfig, host: str, port: int) -> str | None:
    """The start-up warning for a server that other machines can reach without authentication."""
    from evpilot.api.server import host_port
    from evpilot.security import is_loopback_host

    if config.auth is not None or is_loopback_host(host):
        return None
    return (
        f"listening on {host_port(host, port)} without authentication: anyone who reaches this port"
        " may command the chargers and change the site (configure auth: see docs/security.md)"
    )


def _data_dir(given: Path | None) -> Path:
    return given or Path(platformdirs.user_data_dir("evpilot"))


def run(config: AppConfig, data_dir: Path | None, http: tuple[str, int] | None, speed: float) -> int:
    """Serve the API and run the control loop until SIGINT/SIGTERM."""
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        """uvicorn's server, but SIGINT/SIGTERM end `serve()` normally instead of being re-raised."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutdown, which would kill the process before the
            # store is closed and make a clean stop exit with -15.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    from evpilot.api.app import create_app
    from evpilot.api.server import CannotListen, host_port, listen, server_config, tls_options
    from evpilot.control.clock import ScaledClock
    from evpilot.control.runtime import Runtime
    from evpilot.security import BadTls, is_loopback_host, server_tls_context
    from evpilot.store.sqlite import Store

    host, port = http or (config.http.host, config.http.port)
    tls: dict[str, str] = {}
    if config.http.tls is not None:
        try:
            tls = tls_options(config.http.tls.cert, config.http.tls.key)
        except BadTls as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
    ocpp_tls = config.ocpp_server.tls if config.ocpp_server is not None else None
    if ocpp_tls is not None:
        try:
            server_tls_context(ocpp_tls.cert, ocpp_tls.key, "ocpp_server.tls")
        except BadTls as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
    # Bound before anything else happens: a port in use must not leave a session or a row behind.
    try:
        sock = listen(host, port)
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        return 1
    port = sock.getsockname()[1]  # with port 0 the system picks one; the banner shows it
    directory = _data_dir(data_dir)
    store = Store(directory / "evpilot.sqlite3")
    log = logging.getLogger("evpilot")

    async def serve() -> None:
        rt = Runtime(config, ScaledClock(speed), store)
        app = create_app(rt)
        server = _GracefulServer(server_config(app, host, port, lifespan="on", **tls))
        warning = exposure_warning(config, host, port)
        if warning is not None:
            log.warning("%s", warning)
        if config.modbus.port is not None and not is_loopback_host(config.modbus.host):
            log.warning(
                "Modbus TCP on %s: Modbus has no authentication, anyone who reaches this port may"
                " command the chargers (keep it on a separate network: see docs/security.md)",
                host_port(config.modbus.host, config.modbus.port),
            )
        log.info(
            "evpilot %s on %s://%s (speed %gx, data %s, %d charger(s), simulator %s)",
            __version__,
            "https" if tls else "http",
            host_port(host, port),
            speed,
            directory,
            len(config.chargers),
            "on" if config.sim.enabled else "off",
        )
        await server.serve(sockets=[sock])

    try:
        asyncio.run(serve())
    finally:
        sock.close()
        store.close()
    log.info("evpilot stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
