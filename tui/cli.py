"""`edge tui` / `python -m tui`: parse the arguments, keep logs off the screen, run the dashboard."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

EXIT_USAGE = 2
# A password on the command line would show in `ps` and the shell's history.
KEY_PASSWORD_ENV = "EDGE_TUI_TLS_KEY_PASSWORD"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge tui", description="Operator dashboard over the MQTT API.")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://[user:pass@]host[:port]")
    p.add_argument("--site", required=True, help="site id, as in dos/v1/{site}/...")
    p.add_argument("--inventory", type=Path, help="inventory CSV with lamp positions (for the map)")
    p.add_argument("--role", choices=("operator", "viewer"), default="operator")
    p.add_argument("--tls-ca", type=Path, help="mqtts://: CA certificate (PEM) of the broker's certificate")
    p.add_argument("--tls-cert", type=Path, help="mqtts://: client certificate (PEM) for mutual TLS")
    p.add_argument(
        "--tls-key",
        type=Path,
        help=f"mqtts://: the client certificate's key (PEM); its password from ${KEY_PASSWORD_ENV}",
    )
    p.add_argument("--log-file", type=Path, help="write logs here (default: discard them)")
    p.add_argument("--log-level", default="info")
    return p


def _configure_logging(path: Path | None, level: str) -> TextIO:
    """Route structlog and stdlib logging to a file (or nowhere): never onto the screen."""
    import structlog

    from edge.redact import redact_event

    stream: TextIO = path.open("a", encoding="utf-8") if path else open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the app
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return stream


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dashboard; returns the process exit code (2 for bad arguments)."""
    args = _parser().parse_args(argv)
    from edge import redact
    from edge.errors import ConfigError
    from edge.mqtt import TlsFiles
    from tui.app import DashboardApp
    from tui.client import BrokerUrl, DashboardClient
    from tui.inventory import load_positions

    redact.remember_url(args.broker)
    key_password = os.environ.get(KEY_PASSWORD_ENV) or None
    redact.remember(key_password)
    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key, key_password, key="tui")
    try:
        BrokerUrl.parse(args.broker)
        if tls.configured and not args.broker.startswith("mqtts://"):
            raise ValueError("--tls-ca/--tls-cert/--tls-key need an mqtts:// broker URL")
        client = DashboardClient(args.broker, args.site, tls=tls)
        inventory = load_positions(args.inventory) if args.inventory else None
    except (ValueError, OSError, ConfigError) as exc:
        print(f"edge tui: {redact.redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    stream = _configure_logging(args.log_file, args.log_level)
    try:
        app = DashboardApp(args.broker, args.site, args.role, inventory=inventory, client=client)
        app.run()
        return app.return_code or 0
    finally:
        stream.close()
