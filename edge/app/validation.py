"""One validation for `edge check-config` and `edge run`: what check-config passes, run accepts.

- `load_site(path)`: settings, inventory and bins, or a ConfigError listing every problem.
- `site_problems(site)`: the rules that need more than one file (settings against inventory).
  This is the single place for such rules: add a new cross-check here and both commands get it.
- `connect_problems(settings)`: tries every broker the site uses and its database, each with a
  timeout (`edge run` before it starts, `edge check-config --connect` on request).
- `describe(exc)`: one line naming the key and the cause, for an error that still escapes the
  start (a migration that fails, a port in use ...): never a traceback.

Every line goes through `edge.redact`, so no password is echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import ssl
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import ConfigError
from edge.redact import redact_text, redact_url, remember_url

if TYPE_CHECKING:
    from devices.inventory import Bin, Inventory
    from edge.mqtt import BrokerAddress
    from edge.settings import BrokerLink, Settings

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Site:
    """A validated site: its settings, lamp/charger inventory and bins."""

    settings: Settings
    inventory: Inventory
    bins: list[Bin]


def load_site(path: Path | str) -> Site:
    """Load and cross-check a site; raise ConfigError whose `lines` name every problem."""
    from devices.inventory import load_bins, load_inventory
    from edge.settings import load_settings

    settings = load_settings(path)
    inventory = load_inventory(settings.inventory_path())
    bins_path = settings.bins_path()
    bins = load_bins(bins_path, [z.id for z in settings.waste.zones]) if bins_path is not None else []
    for charger in inventory.chargers.values():
        remember_url(charger.url)  # opc.tcp://user:password@host may carry credentials
    site = Site(settings, inventory, bins)
    problems = site_problems(site)
    if problems:
        error = ConfigError("\n".join(problems), file=str(path))
        error.lines = problems
        raise error
    return site


def site_problems(site: Site) -> list[str]:
    """Rules across settings and inventory, as `key: reason` lines (empty when the site is fine)."""
    s, inv = site.settings, site.inventory
    problems: list[str] = []
    if not s.mqtt.url:
        problems.append("mqtt.url: empty; `edge run` needs a broker URL (only the demo starts its own)")
    cs = s.charging
    if inv.chargers and s.lighting.report_every_s >= cs.stale_after_s:
        problems.append(
            f"lighting.report_every_s: {s.lighting.report_every_s:g} s is not below "
            f"charging.stale_after_s ({cs.stale_after_s:g} s): quiet lamps would count at full power"
        )
    problems += ocpp_problems(s, inv)
    if inv.charger_servers:
        opcua = sum(len(ids) for _url, ids in inv.charger_servers.values())
        if not cs.client_cert and not cs.allow_no_security:
            problems.append(
                f"charging.allow_no_security: the inventory has {opcua} OPC UA charge point(s) but no "
                "OPC UA security: set charging.client_cert, client_key and server_cert, "
                "or allow_no_security = true"
            )
        if cs.client_cert:
            for key in ("client_cert", "client_key", "server_cert"):
                value = getattr(cs, key)
                if not value:
                    problems.append(f"charging.{key}: missing (charging.client_cert is set)")
                elif not s.resolve(value).is_file():
                    problems.append(f"charging.{key}: no such file: {s.resolve(value)}")
    if inv.chargers:
        from controllers.charging import failsafe_problems  # the supply tree's fail-safe budget

        problems += failsafe_problems(cs, inv)
    problems += tls_problems(s)
    problems += safety_problems(s, inv)
    return problems


def ocpp_problems(settings: Settings, inv: Inventory) -> list[str]:
    """OCPP charge points need the central system's section, and (profiles 1, 2) a password each."""
    from edge.app.domains.charging import ocpp_passwords

    ids = [c.id for c in inv.chargers.values() if c.protocol == "ocpp"]
    oc = settings.charging.ocpp
    if not ids:
        return []
    if oc is None:
        return [f"charging.ocpp: missing; {len(ids)} charge point(s) speak OCPP ({ids[0]} ...)"]
    problems = []
    if oc.security_profile >= 1:
        try:
            ocpp_passwords(settings, oc.passwords_file, ids)
        except ConfigError as exc:
            problems.append(f"charging.ocpp.passwords_file: {exc}")
    for key in ("cert_file", "key_file"):
        value = getattr(oc, key)
        if value and not settings.resolve(value).is_file():
            problems.append(f"charging.ocpp.{key}: no such file: {settings.resolve(value)}")
    return problems


def safety_problems(settings: Settings, inv: Inventory) -> list[str]:
    """The help points' posts and slots, the sensors' profiles and the rules' metrics."""
    from edge.app.domains.environment import check_rules
    from edge.app.domains.helppoints import endpoints_of, sites_of

    problems = []
    for check in (lambda: sites_of(settings, inv), lambda: endpoints_of(settings, inv),
                  lambda: check_rules(settings.environment)):  # fmt: skip
        try:
            check()
        except ConfigError as exc:
            problems.append(f"{exc.key}: {exc.args[0]}")
    return problems


def tls_problems(settings: Settings) -> list[str]:
    """Each broker link's TLS files load (CA, certificate, key and its password)."""
    problems: list[str] = []
    for key, link in settings.broker_links().items():
        try:
            link.address()
        except ConfigError as exc:
            problems.append(f"{exc.key or key}: {exc.args[0]}")
    return problems


async def connect_problems(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> list[str]:
    """Try every broker the site uses and its database; one line per failure."""
    links = settings.broker_links()
    checks = [_broker_problem(key, link, timeout_s) for key, link in links.items()]
    checks.append(asyncio.to_thread(_database_problem, settings.storage.url, timeout_s))
    results = await asyncio.gather(*checks)
    return [r for r in results if r]


def connect_report(settings: Settings) -> list[str]:
    """What `--connect` tried, for the ok line: one `key: where: result` per peer."""
    lines = [f"{key}: {link.address().where}: connected" for key, link in settings.broker_links().items()]
    url = settings.storage.url
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    new = path not in ("", ":memory:") and not Path(path).exists()
    return [*lines, f"storage.url: {redact_url(url)}: {'can be created' if new else 'connected'}"]


async def _broker_problem(key: str, link: BrokerLink, timeout_s: float) -> str:
    import aiomqtt

    try:
        address = link.address()
    except ConfigError as exc:
        return f"{exc.key or key}: {exc.args[0]}"
    if address.tls:
        problem = await _tls_probe(address, timeout_s)
        if problem:
            return f"{key}: broker {address.where} TLS handshake failed: {problem}"
    # 3.1.1: every broker speaks it, and the check needs nothing of MQTT 5.
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=timeout_s,
        tls_context=address.ssl_context(),
    )
    try:
        async with asyncio.timeout(timeout_s + 1):
            async with client:
                pass
    except TimeoutError:
        return f"{key}: broker {address.where} did not answer within {timeout_s:g} s"
    except (aiomqtt.MqttError, OSError) as exc:
        return f"{key}: broker {address.where} unreachable: {_one_line(exc)}"
    return ""


# MQTT 3.1.1 CONNECT: clean session, keep-alive 60 s, empty client id (the broker assigns one).
_BARE_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"


async def _tls_probe(address: BrokerAddress, timeout_s: float) -> str:
    """The TLS handshake and one CONNECT on a bare socket: the TLS 1.3 alert for a missing or
    refused client certificate only comes with the first read, which paho turns into a silent
    CONNACK timeout. Returns the SSL error's text, or "" when TLS itself is fine."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                address.host, address.port, ssl=address.ssl_context(), server_hostname=address.host
            )
            writer.write(_BARE_CONNECT)
            await writer.drain()
            await reader.read(4)
    except ssl.SSLError as exc:
        return _one_line(exc)
    except (OSError, TimeoutError):
        return ""  # not a TLS matter: the MQTT check below names it
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    return ""


async def url_problems(
    *, broker_url: str = "", database_url: str = "", timeout_s: float = CONNECT_TIMEOUT_S
) -> list[str]:
    """The connect check for URLs given on the command line (`edge demo --broker/--database`)."""
    from edge.settings import BrokerLink, TlsSettings

    checks = []
    if broker_url:
        link = BrokerLink("--broker", broker_url, "--broker", TlsSettings(), Path())
        checks.append(_broker_problem("--broker", link, timeout_s))
    if database_url:
        checks.append(asyncio.to_thread(_database_problem, database_url, timeout_s, "--database"))
    return [r for r in await asyncio.gather(*checks) if r]


def _database_problem(url: str, timeout_s: float, key: str = "storage.url") -> str:
    """Open the database and run `SELECT 1` (SQLite: the folder must be creatable and writable)."""
    import sqlalchemy

    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path in ("", ":memory:"):
            return ""
        folder = Path(path).resolve().parent
        while not folder.exists():
            folder = folder.parent
        try:
            # A real write: permission bits say nothing for root, or on a read-only mount.
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            return f"{key}: cannot create the database at {path}: {folder}: {_one_line(exc)}"
        if not Path(path).exists():
            return ""  # `edge run` creates it
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    args = {"connect_timeout": max(1, int(timeout_s))} if url.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(url, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:
        return f"{key}: cannot open {redact_url(url)}: {_one_line(exc)}"
    finally:
        engine.dispose()
    return ""


def describe(exc: BaseException) -> list[str]:
    """One line per failure in `exc` (exception groups flattened), naming the key and the cause."""
    leaves = _leaves(exc)
    return list(dict.fromkeys(_describe_one(e) for e in leaves)) or [_one_line(exc)]


def address_in_use(exc: BaseException) -> bool:
    """Whether any failure in `exc` is a port already in use."""
    return any(isinstance(e, OSError) and e.errno == errno.EADDRINUSE for e in _leaves(exc))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    if isinstance(exc, asyncio.CancelledError):
        return []
    return [exc]


def _describe_one(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return redact_text(str(exc))
    frames = " ".join(f.filename for f in traceback.extract_tb(exc.__traceback__))
    module = type(exc).__module__
    if "alembic" in frames or "/migrations/" in frames:
        return f"storage.url: schema migration failed: {_one_line(exc)}"
    if module.startswith("sqlalchemy") or module.startswith("psycopg"):
        return f"storage.url: database error: {_one_line(exc)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {_one_line(exc)}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"address already in use: {_one_line(exc)}"
    if module.startswith(("aiomqtt", "paho")):
        return f"mqtt: {_one_line(exc)}"
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    """The cause of `exc` on one line: the library's own error (`orig`) first, without SQL."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    text = text.split("\n[SQL:")[0]
    return redact_text(re.sub(r"\s+", " ", text).strip())


def check_file(path: Path | str) -> list[str]:
    """Every problem with a config file and its inventory, as lines for `edge check-config`.

    The same validation `edge run` does before it starts (`load_site`).
    """
    try:
        load_site(path)
    except ConfigError as exc:
        return exc.lines or [str(exc)]
    return []
