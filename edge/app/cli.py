"""`edge` command line: run, check-config, demo, simulate, docs.

A bad config or bad arguments exit with code 2 and a message naming what is wrong,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from edge.errors import ConfigError
from edge.redact import redact_text, redact_url

EXIT_CONFIG = 2
# `edge demo --for N`: the summary is out at N seconds, the district closed by N + this.
DEMO_STOP_BUDGET_S = 15.0


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return v


def _ws_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{redact_url(text)!r}: expected ws://HOST:PORT/PATH or wss://...")
    return text.rstrip("/")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="DOS Edge: city infrastructure at the edge.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon for a site")
    run.add_argument("--config", required=True, type=Path, help="site TOML file")

    chk = sub.add_parser("check-config", help="validate a site TOML file and its inventory")
    chk.add_argument("file", type=Path)
    chk.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the site's brokers and database (with timeouts)",
    )

    demo = sub.add_parser("demo", help="run the demo district (broker, simulators, daemon)")
    demo.add_argument("--headless", action="store_true", help="no screen; print a JSON summary at the end")
    demo.add_argument(
        "--for", dest="seconds", type=_positive, default=None, help="stop after SECONDS (real time)"
    )
    demo.add_argument(
        "--speed", type=_positive, default=300.0, help="clock seconds per real second (default 300)"
    )
    demo.add_argument("--broker", default="", help="use this MQTT broker instead of the embedded one")
    demo.add_argument("--database", default="", help="database URL (default: a temporary SQLite file)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--broker-port", type=int, default=0, help="port of the embedded broker (default: a free one)"
    )
    demo.add_argument(
        "--no-tui", action="store_true", help="print status lines instead of opening the dashboard"
    )
    demo.add_argument(
        "--metrics-port", type=int, default=None, help="serve /metrics and /health on 127.0.0.1:PORT"
    )

    tui = sub.add_parser("tui", help="the operator dashboard (a client of the MQTT API)", add_help=False)
    tui.add_argument("rest", nargs=argparse.REMAINDER)

    sim = sub.add_parser("simulate", help="run device simulators")
    sim.add_argument("domain", choices=["lights", "chargers", "displays", "waste", "helppoints"])
    sim.add_argument("--config", type=Path, help="serve the controllers of this site's inventory")
    sim.add_argument("--controllers", type=int, default=10)
    sim.add_argument("--count", type=int, default=60, help="charge points (chargers)")
    sim.add_argument("--feeders", type=int, default=6, help="feeders the charge points share (chargers)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--lamps", type=int, default=50, help="lamps per controller")
    sim.add_argument("--port", type=int, default=15020, help="first TCP port")
    sim.add_argument("--speed", type=_positive, default=1.0)
    sim.add_argument("--fault", action="append", default=[], metavar="TARGET:FAULT", help="inject at start")
    sim.add_argument("--mqtt", default="", help="broker URL for fault injection over MQTT")
    sim.add_argument("--protocol", choices=["opcua", "ocpp", "mixed"], default="opcua", help="chargers")
    sim.add_argument(
        "--central-system", type=_ws_url, metavar="URL", help="chargers: OCPP, e.g. ws://HOST:PORT/ocpp"
    )
    sim.add_argument("--ocpp-ca-file", type=Path, help="chargers: the CA of a wss:// central system")
    sim.add_argument("--site", default="", help="waste: a site under edge/app/sites (kreuzviertel, schwerte)")
    sim.add_argument(
        "--fault-rate", type=float, default=0.0, help="waste: random sensor faults per bin per day"
    )
    sim.add_argument(
        "--formats", choices=["both", "chirpstack", "tts"], default="both", help="waste: uplinks"
    )

    health = sub.add_parser("health", help="ask a running daemon whether it is ready, and why not")
    health.add_argument("--config", type=Path, help="the site's settings: its [metrics] host and port")
    health.add_argument("--url", default="", help="the endpoint instead, e.g. http://127.0.0.1:9464")

    docs = sub.add_parser("docs", help="generate JSON Schemas and the AsyncAPI document")
    docs.add_argument("--out", type=Path, default=Path("docs"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tui"]:
        from tui.cli import main as tui_main  # the dashboard sets up its own logging, off the screen

        return tui_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "check-config":
            return _check(args.file) if not args.connect else _run_async(lambda: _check_connect(args.file))
        if args.cmd == "run":
            return _run_async(lambda: _run(args.config))
        if args.cmd == "health":
            return _health(args)
        if args.cmd == "demo":
            if not args.headless and not args.no_tui and sys.stdout.isatty():
                return _demo_with_dashboard(args)
            return _run_async(lambda: _demo(args))
        if args.cmd == "simulate":
            return _run_async(lambda: _simulate(args))
        if args.cmd == "docs":
            from edge.app.docs import write_docs

            for path in write_docs(args.out):
                print(path)
            return 0
    except ConfigError as exc:
        _print_problems(exc.file or "edge", exc.lines or [str(exc)])
        return EXIT_CONFIG
    except Exception as exc:
        # A port in use is the user's to fix, not a bug: one line, not a traceback.
        from edge.app.validation import address_in_use, describe

        if not address_in_use(exc):
            raise
        for line in describe(exc):
            print(f"edge {args.cmd}: {line}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _print_problems(file: Path | str, lines: Sequence[str]) -> None:
    """A header naming the file, then one line per problem (secrets masked)."""
    print(f"{file}: {len(lines)} problem(s)", file=sys.stderr)
    for line in lines:
        print(f"  {redact_text(line)}", file=sys.stderr)


def _health(args: argparse.Namespace) -> int:
    """`edge health`: the daemon's /health, printed; exit 0 ready, 1 not ready, 2 not reachable."""
    from urllib.parse import urlsplit

    from edge.metrics import fetch_health
    from edge.settings import load_settings

    if args.url:
        u = urlsplit(args.url)
        host, port = u.hostname or "127.0.0.1", u.port or 9464
    elif args.config:
        m = load_settings(args.config).metrics
        host, port = m.host, m.port
    else:
        print("edge health: --config SITE or --url URL", file=sys.stderr)
        return EXIT_CONFIG
    try:
        ready, body = asyncio.run(fetch_health(host, port))
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        print(f"edge health: {host}:{port} not reachable: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(body, indent=2))
    return 0 if ready else 1


def _check(file: Path) -> int:
    """`edge check-config FILE`: the validation `edge run` does first, nothing more."""
    from edge.app.validation import check_file

    problems = check_file(file)
    if problems:
        _print_problems(file, problems)
        return EXIT_CONFIG
    print(f"{file}: ok")
    return 0


async def _check_connect(file: Path) -> int:
    """`edge check-config FILE --connect`: validate, then try the brokers and the database."""
    from edge.app.validation import connect_problems, connect_report, load_site

    site = load_site(file)  # a ConfigError is printed by main()
    problems = await connect_problems(site.settings)
    if problems:
        _print_problems(file, problems)
        return EXIT_CONFIG
    print(f"{file}: ok")
    for line in connect_report(site.settings):
        print(f"  {line}")
    return 0


def _run_async(factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop; SIGINT/SIGTERM cancel the main task, which shuts down gracefully."""
    import uvloop

    async def main_task() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await factory()
        except asyncio.CancelledError:
            return 0

    return uvloop.run(main_task())


async def _run(config: Path) -> int:
    """`edge run`: the check-config validation and a connect check first, then the daemon.

    Whatever stops the start (a bad file, a broker or database out of reach, a migration that
    fails) is one line per problem and exit code 2; a crash after the start is logged.
    """
    from edge import logs
    from edge.app.validation import connect_problems, describe, load_site

    site = load_site(config)  # a ConfigError is printed by main()
    settings = site.settings
    logs.configure(settings.logging.level, settings.logging.format)
    problems = await connect_problems(settings)
    if problems:
        _print_problems(config, problems)
        return EXIT_CONFIG
    # The daemon's imports take seconds: only after the checks, so a bad site fails at once.
    from edge.app.daemon import running
    from edge.clock import SimClock, SystemClock

    clock = SystemClock() if settings.clock.speed == 1.0 else SimClock(_start(settings), settings.clock.speed)
    started = False
    try:
        async with running(settings, site.inventory, clock):
            started = True
            await asyncio.Event().wait()
    except Exception as exc:
        if started:
            import structlog

            structlog.get_logger("edge.app.cli").exception("daemon_crashed")
            return 1
        for line in describe(exc):
            print(f"edge run: cannot start: {line}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _start(settings: Any) -> float:
    import time
    from datetime import datetime

    return datetime.fromisoformat(settings.clock.start).timestamp() if settings.clock.start else time.time()


def _demo_with_dashboard(args: argparse.Namespace) -> int:
    """The demo in a child process (logs to a file), the dashboard in the foreground."""
    import subprocess

    from edge.app.demo import SITE_DIR, demo_log_path
    from edge.net import free_port

    port = args.broker_port or free_port()
    log_path = demo_log_path()
    cmd = [sys.executable, "-m", "edge.app.cli", "demo", "--headless", "--speed", str(args.speed)]
    cmd += ["--broker-port", str(port), "--seed", str(args.seed)]
    if args.seconds is not None:
        cmd += ["--for", str(args.seconds)]
    if args.broker:
        cmd += ["--broker", args.broker]
    if args.database:
        cmd += ["--database", args.database]
    url = args.broker or f"mqtt://127.0.0.1:{port}"
    import os
    import threading

    def stop(_sig: int, _frame: object) -> None:
        # SIGTERM (or the demo's end) leaves the dashboard like Ctrl+C: the finally below
        # stops the district and the terminal is restored.
        raise KeyboardInterrupt

    with log_path.open("w") as log_file:
        child = subprocess.Popen(cmd, stdout=log_file, stderr=log_file)
        previous = signal.signal(signal.SIGTERM, stop)
        if args.seconds is not None:

            def watch() -> None:
                # `--for N`: the district stops after N seconds, and the dashboard with it.
                child.wait()
                os.kill(os.getpid(), signal.SIGTERM)

            threading.Thread(target=watch, name="demo.watch", daemon=True).start()
        try:
            from tui.cli import main as tui_main

            return tui_main(
                ["--broker", url, "--site", "kreuzviertel", "--inventory", str(SITE_DIR / "inventory.csv")]
            )
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
            print(f"demo log: {log_path}")


async def _demo(args: argparse.Namespace) -> int:
    from edge import logs
    from edge.app.validation import url_problems

    # A broker or database given by the user that cannot be reached: one line each, exit 2.
    problems = await url_problems(broker_url=args.broker, database_url=args.database)
    if problems:
        for line in problems:
            print(f"edge demo: {redact_text(line)}", file=sys.stderr)
        return EXIT_CONFIG
    from edge.app.demo import run_demo

    logs.configure("warning" if args.headless else "info", "auto")
    printed = False

    def show(result: dict[str, Any]) -> None:
        # Printed before the district shuts down: the summary is out when `--for` is up.
        nonlocal printed
        printed = True
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        sys.stdout.flush()

    demo = run_demo(
        seconds=args.seconds,
        headless=args.headless,
        speed=args.speed,
        broker_url=args.broker,
        database_url=args.database,
        seed=args.seed,
        broker_port=args.broker_port,
        metrics_port=args.metrics_port,
        status_lines=not args.headless,
        on_summary=show,
    )
    try:
        if args.seconds is None:
            await demo
            return 0
        try:
            async with asyncio.timeout(args.seconds + DEMO_STOP_BUDGET_S):
                await demo
        except TimeoutError:
            # A backstop, not the plan: every part closes within its own timeouts.
            import structlog

            structlog.get_logger("edge.app.demo").warning(
                "demo_stop_slow", budget_s=DEMO_STOP_BUDGET_S, summary_printed=printed
            )
        return 0
    finally:
        # The waste planner's process pool is shut down without waiting, and the interpreter
        # would then wait at exit for a solve nobody needs: end our own children now.
        import multiprocessing

        for child in multiprocessing.active_children():
            child.terminate()


async def _simulate(args: argparse.Namespace) -> int:
    """`edge simulate {domain}`: one domain's simulated devices until interrupted."""
    from edge import logs

    logs.configure("info", "auto")
    run = {
        "chargers": _simulate_chargers,
        "waste": _simulate_waste,
        "displays": _simulate_displays,
        "helppoints": _simulate_helppoints,
    }.get(args.domain, _simulate_lights)
    return await run(args)


async def _simulate_chargers(args: argparse.Namespace) -> int:
    """`edge simulate chargers`: charge points on one OPC UA server, or clients of an OCPP central system."""
    from simulators.charging import check_ocpp_args, serve_chargers

    url, ca = args.central_system, args.ocpp_ca_file
    port = args.port if args.port != 15020 else 4840
    try:  # the OCPP password comes from the environment, never the command line (ps shows that)
        check_ocpp_args(args.protocol, url, ca)
        if args.protocol != "ocpp":
            print(f"serving {args.count} charge points at opc.tcp://127.0.0.1:{port}", file=sys.stderr)
        if args.protocol != "opcua":
            print(f"OCPP charge points connecting to {redact_url(str(url))}", file=sys.stderr)
        await serve_chargers(
            args.count, port, args.speed, args.seed, args.fault, feeders=args.feeders, protocol=args.protocol,
            central_system=url, ocpp_password=os.environ.get("EDGE_SIM_OCPP_PASSWORD") or None, ocpp_ca_file=ca,
        )  # fmt: skip
    except ValueError as exc:
        print(f"edge simulate chargers: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


async def _simulate_displays(args: argparse.Namespace) -> int:
    """`edge simulate displays`: the site's LED boards (MQTT), VMS signs (Modbus) and car parks."""
    from edge.mqtt import BrokerAddress
    from edge.settings import load_settings
    from simulators import sim_clock
    from simulators.displays import DisplaySimulator, SimBoard, SimSign
    from simulators.parking import ParkingSimulator, SimCarPark

    if not args.config:
        print(
            "edge simulate displays: --config site.toml is required (it lists the displays)", file=sys.stderr
        )
        return EXIT_CONFIG
    site = load_settings(args.config)
    dcfg = site.displays
    if not dcfg.displays:
        print(f"{args.config}: no [displays] configured", file=sys.stderr)
        return EXIT_CONFIG
    url = args.mqtt or dcfg.board_mqtt_url or site.mqtt.url
    clock = sim_clock(args.speed, None)
    parking = ParkingSimulator(
        [SimCarPark(c.id, c.capacity, tuple(c.sensors)) for c in dcfg.car_parks],
        clock,
        base_topic=f"{site.mqtt.topic_prefix}/{site.site.id}",
        seed=args.seed,
    )
    # Credentials and TLS as in the URL (the site's [mqtt.tls] when it is the site's broker).
    address = BrokerAddress.parse(url, tls=site.mqtt_link().files() if url == site.mqtt.url else None)
    boards = [SimBoard(x.id) for x in dcfg.displays if x.kind == "board"]
    signs = [SimSign(x.id, host=x.host, port=x.port, unit=x.unit) for x in dcfg.displays if x.kind == "sign"]
    async with (
        DisplaySimulator(clock, boards=boards, signs=signs, mqtt_url=url) as dsim,
        address.client(f"sim-parking-{site.site.id}", timeout_s=10.0, pending=64) as client,
    ):
        for spec in args.fault:
            target, _, fault = spec.partition(":")
            dsim.inject(target, fault)
        print(
            f"serving {len(dcfg.displays)} displays and {len(dcfg.car_parks)} car parks on {redact_url(url)}",
            file=sys.stderr,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(dsim.run_mqtt_faults(url), name="sim.displays.faults")
            await parking.run(client, every_s=300.0)
    return 0


async def _simulate_helppoints(args: argparse.Namespace) -> int:
    """`edge simulate helppoints --config SITE`: the site's lamp controllers with the help-point
    blocks of its Modbus help points, and its LoRaWAN buttons (uplinks to the site's broker, or
    `--mqtt`); presses and faults on `dos/sim/helppoints/faults`."""
    from devices.inventory import load_inventory
    from edge.app.demo import sim_controllers
    from edge.app.domains.helppoints import endpoints_of
    from edge.settings import load_settings
    from simulators import sim_clock
    from simulators.helppoints import HelpPointSimulator, SimButton, SimHelpPoint, block_ranges
    from simulators.lighting import LightingSimulator

    if not args.config:
        print("edge simulate helppoints: --config SITE is required", file=sys.stderr)
        return EXIT_CONFIG
    settings = load_settings(args.config)
    inv = load_inventory(settings.inventory_path())
    points = [
        SimHelpPoint(hp, ep.endpoint_id, slot) for ep in endpoints_of(settings, inv) for slot, hp in ep.points
    ]
    # LoRaWAN buttons send their uplinks to the site's broker, as its network server would
    buttons = [SimButton(p.id, p.dev_eui, "chirpstack") for p in settings.helppoints.points if p.dev_eui]
    clock = sim_clock(args.speed, None)
    async with (
        LightingSimulator(sim_controllers(inv, extra=block_ranges(points)), clock) as sim,
        HelpPointSimulator(
            points, sim, clock, buttons=buttons, mqtt_url=args.mqtt or settings.mqtt.url
        ) as hsim,
    ):
        for spec in args.fault:
            target, _, fault = spec.partition(":")
            hsim.inject(target, fault)
        print(
            f"serving {len(points)} help points in {len(inv.controllers)} lamp controllers", file=sys.stderr
        )
        if args.mqtt:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sim.run_mqtt_faults(args.mqtt), name="sim.lights.faults")
                await hsim.run_mqtt_faults(args.mqtt)
        else:
            await asyncio.Event().wait()
    return 0


async def _simulate_lights(args: argparse.Namespace) -> int:
    """`edge simulate lights`: lamp controllers over Modbus TCP (the site's, or a made-up set)."""
    from devices.inventory import load_inventory
    from edge.app.demo import sim_controllers
    from edge.settings import load_settings
    from simulators import settle_heap, sim_clock
    from simulators.lighting import LightingSimulator, SimController, SimLamp

    if args.config:
        controllers = sim_controllers(load_inventory(load_settings(args.config).inventory_path()))
    else:
        controllers = [
            SimController(
                endpoint_id=f"lc-{c + 1:02d}",
                host="127.0.0.1",
                port=args.port + c,
                unit=1,
                lamps=tuple(SimLamp(device_id=f"L{c + 1:02d}{i:03d}", index=i) for i in range(args.lamps)),
            )
            for c in range(args.controllers)
        ]
    async with LightingSimulator(controllers, sim_clock(args.speed, None)) as sim:
        settle_heap()
        for spec in args.fault:
            target, _, fault = spec.partition(":")
            sim.inject(target, fault)
        print(f"serving {len(controllers)} lamp controllers from port {controllers[0].port}", file=sys.stderr)
        if args.mqtt:
            await sim.run_mqtt_faults(args.mqtt)
        else:
            await asyncio.Event().wait()
    return 0


async def _simulate_waste(args: argparse.Namespace) -> int:
    """`edge simulate waste`: the site's bins (LoRaWAN uplinks) and trucks (fleet protocol) on its broker."""
    from edge.settings import load_settings
    from simulators.waste import run_waste_simulator, site_config

    if args.fault_rate < 0:
        print("edge simulate waste: --fault-rate must be >= 0", file=sys.stderr)
        return EXIT_CONFIG
    config = args.config or site_config(args.site or "kreuzviertel")
    settings = load_settings(config)
    if settings.bins_path() is None:
        print(f"{config}: no [waste] bins configured", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"serving {len(settings.waste.trucks)} trucks and the bins of {settings.bins_path()} "
        f"on {redact_url(args.mqtt or settings.mqtt.url)}",
        file=sys.stderr,
    )
    try:
        await run_waste_simulator(
            settings,
            mqtt_url=args.mqtt or None,
            seed=args.seed,
            speed=args.speed,
            faults=args.fault,
            fault_rate_per_day=args.fault_rate,
            formats=args.formats,
        )
    except ValueError as exc:
        print(f"edge simulate waste: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
