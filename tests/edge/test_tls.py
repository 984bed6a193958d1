"""Every broker link over TLS, against a real Mosquitto with a private CA and mutual TLS.

The test makes a private CA, a server certificate for 127.0.0.1/localhost and a client
certificate (its key encrypted with a password) with `cryptography`, writes a Mosquitto
config with `require_certificate true`, and runs its own `mosquitto -c` on a free loopback
port. The listener is the example of docs/operations.md with its port and paths replaced. The
links are the real ones: `edge run` (the API link, LoRaWAN uplinks ride on it),
the fleet and board drivers' sessions, `check-config --connect` and the dashboard's client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import write_site

from edge.clock import SystemClock
from edge.errors import ConfigError
from edge.mqtt import TlsFiles
from edge.net import free_port
from tui.client import Connected, DashboardClient

HOST = "127.0.0.1"
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
KEY_SECRET = "Tls-key-pass-5e2b"
START_TIMEOUT_S = 10.0
WAIT_S = 15.0
MOSQUITTO = next(
    (
        found
        for c in ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
        if (found := shutil.which(c))
    ),
    None,
)


@dataclass(frozen=True)
class Pki:
    """Files of a private CA, the broker's certificate, a client's certificate, and a stranger CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_SECRET
    other_ca: Path  # a CA that signed nothing here

    def files(self, *, ca: Path | None = None, cert: bool = True) -> TlsFiles:
        return TlsFiles(
            ca or self.ca,
            self.client_cert if cert else None,
            self.client_key if cert else None,
            KEY_SECRET if cert else None,
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None,
           password: str | None = None) -> Path:  # fmt: skip
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA with a server (127.0.0.1, localhost) and a client certificate; EC keys (fast)."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("DOS Edge test CA", ca_key, None, ca=True)
    other = _cert("Some other CA", other_key, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
    server = _cert(
        "broker", server_key, ("DOS Edge test CA", ca_key), san=san, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = _cert("edge", client_key, ("DOS Edge test CA", ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=_write(d / "ca.pem", ca),
        server_cert=_write(d / "server.pem", server),
        server_key=_write(d / "server.key", key=server_key),
        client_cert=_write(d / "client.pem", client),
        client_key=_write(d / "client.key", key=client_key, password=KEY_SECRET),
        other_ca=_write(d / "other-ca.pem", other),
    )


@dataclass(frozen=True)
class TlsBroker:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"mqtts://{HOST}:{self.port}"


def _documented_listener(replace: dict[str, str]) -> list[str]:
    """The Mosquitto TLS example of docs/operations.md, with its port and paths replaced."""
    text = OPERATIONS.read_text(encoding="utf-8")
    block = text.split("```conf\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key = line.split()[0]
        lines.append(f"{key} {replace.pop(key)}" if key in replace else line)
    assert not replace, f"the example lacks {sorted(replace)}"
    return lines


@pytest.fixture
async def tls_broker(pki: Pki, tmp_path: Path) -> AsyncIterator[TlsBroker]:
    """Mosquitto with one TLS listener that requires a client certificate from the private CA."""
    if MOSQUITTO is None:
        pytest.skip("no mosquitto binary: the TLS tests need a real Mosquitto")
    port = free_port(HOST)
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "mosquitto.conf"
    paths = {"cafile": str(pki.ca), "certfile": str(pki.server_cert), "keyfile": str(pki.server_key)}
    lines = _documented_listener({"listener": f"{port} {HOST}", **paths})
    assert "require_certificate true" in lines
    lines += ["allow_anonymous true", "persistence false", f"log_dest file {log}"]
    if os.geteuid() == 0:
        lines.append("user root")  # else mosquitto drops to `mosquitto`, which cannot read tmp_path
    conf.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"mosquitto exited with {proc.returncode}: {log.read_text()}")
                try:
                    _, writer = await asyncio.open_connection(HOST, port)
                except OSError:
                    await asyncio.sleep(0.02)  # polling a port that is not open yet
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield TlsBroker(port, log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _tls_toml(pki: Pki, section: str, *, ca: Path | None = None, cert: bool = True) -> str:
    lines = [f"[{section}]", f'ca_file = "{ca or pki.ca}"']
    if cert:
        lines += [f'cert_file = "{pki.client_cert}"', f'key_file = "{pki.client_key}"']
    return "\n".join(lines) + "\n"


def _site(tmp_path: Path, broker: TlsBroker, pki: Pki, *, ca: Path | None = None, cert: bool = True) -> Path:
    cfg = write_site(tmp_path, site_id="tls" + os.urandom(3).hex(), mqtt_url=broker.url,
                     db_url=f"sqlite:///{tmp_path / 'edge.db'}")  # fmt: skip
    with cfg.open("a") as fh:
        fh.write(_tls_toml(pki, "mqtt.tls", ca=ca, cert=cert))
    return cfg


def _edge(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGE_MQTT__TLS__KEY_PASSWORD": KEY_SECRET,
        "EDGE_DISPLAYS__BOARD_TLS__KEY_PASSWORD": KEY_SECRET,
    }
    return subprocess.run([sys.executable, "-m", "edge.app.cli", *args], capture_output=True, text=True,
                          check=False, timeout=timeout_s, env=env)  # fmt: skip


def _client(broker: TlsBroker, files: TlsFiles, name: str) -> aiomqtt.Client:
    return aiomqtt.Client(HOST, broker.port, identifier=name, timeout=WAIT_S, tls_context=files.context())


async def test_edge_run_connects_over_mutual_tls(tls_broker: TlsBroker, pki: Pki, tmp_path: Path) -> None:
    """`edge run` with mqtts://, the private CA and an encrypted client key comes online (seen by
    a TLS client), stops cleanly, and its logs never show the key's password."""
    cfg = _site(tmp_path, tls_broker, pki)
    site_id = cfg.read_text().split('id = "', 1)[1].split('"', 1)[0]
    topic = f"dos/v1/{site_id}/status"
    env = {**os.environ, "EDGE_MQTT__TLS__KEY_PASSWORD": KEY_SECRET, "EDGE_LOGGING__FORMAT": "json",
           "EDGE_LOGGING__LEVEL": "debug"}  # fmt: skip
    async with _client(tls_broker, pki.files(), "tls-watch") as watch:
        await watch.subscribe(topic, qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.app.cli", "run", "--config", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            async with asyncio.timeout(WAIT_S * 2):
                async for msg in watch.messages:
                    if msg.payload and orjson.loads(msg.payload)["online"] is True:
                        break
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert KEY_SECRET not in out.decode() + err.decode()
    assert '"event": "mqtt_connected"' in err.decode()


async def test_fleet_and_board_links_use_their_tls_settings(tls_broker: TlsBroker, pki: Pki) -> None:
    """The fleet driver's and the board driver's own sessions connect with their TLS files
    (the same `devices.protocols.mqtt` client both drivers use)."""
    from devices.displays import DisplayDriver
    from devices.waste import FleetDriver

    fleet = FleetDriver(lambda _e: None, SystemClock(), ["T1"], mqtt_url=tls_broker.url, tls=pki.files())
    async with fleet:
        await fleet.wait_connected(WAIT_S)
    boards = DisplayDriver(lambda _e: None, SystemClock(), boards=["led-1"], mqtt_url=tls_broker.url,
                           tls=pki.files())  # fmt: skip
    async with boards:
        assert boards._board_link is not None
        await boards._board_link.wait_connected(WAIT_S)  # connected and subscribed to the status


async def test_dashboard_connects_over_mutual_tls(tls_broker: TlsBroker, pki: Pki) -> None:
    """The operator dashboard's client connects with the CA and the client certificate."""
    client = DashboardClient(tls_broker.url, "tlssite", tls=pki.files(), connect_timeout_s=5)
    connected = asyncio.Event()
    task = asyncio.create_task(
        client.run(lambda e: connected.set() if isinstance(e, Connected) else None), name="tui.client"
    )
    try:
        async with asyncio.timeout(WAIT_S):
            await connected.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_check_config_connect_reaches_every_link(
    tls_broker: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """`check-config --connect` over TLS: the northbound broker and the boards' own link (its own
    URL and [displays.board_tls]) both connect."""
    cfg = _site(tmp_path, tls_broker, pki)
    with cfg.open("a") as fh:
        fh.write(f'[displays]\nboard_mqtt_url = "mqtts://localhost:{tls_broker.port}"\n')
        fh.write('displays = [{id = "led-1", kind = "board"}]\n')
        fh.write(_tls_toml(pki, "displays.board_tls"))
    r = await asyncio.to_thread(_edge, "check-config", "--connect", str(cfg))
    assert r.returncode == 0, r.stderr
    assert f"mqtt.url: {HOST}:{tls_broker.port}: connected" in r.stdout
    assert f"displays.board_mqtt_url: localhost:{tls_broker.port}: connected" in r.stdout


@pytest.mark.parametrize("case", ["wrong_ca", "no_client_cert"])
async def test_wrong_ca_or_missing_client_cert_is_one_line(
    tls_broker: TlsBroker, pki: Pki, tmp_path: Path, case: str
) -> None:
    """A CA that did not sign the broker's certificate, or no client certificate for a broker that
    requires one: `edge run` and `check-config --connect` exit 2 with one line naming mqtt.url."""
    cfg = (
        _site(tmp_path, tls_broker, pki, ca=pki.other_ca)
        if case == "wrong_ca"
        else _site(tmp_path, tls_broker, pki, cert=False)
    )
    for args in (("check-config", "--connect", str(cfg)), ("run", "--config", str(cfg))):
        r = await asyncio.to_thread(_edge, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        problems = [line for line in r.stderr.splitlines() if line.startswith("  ")]
        assert len(problems) == 1, r.stderr
        assert problems[0].startswith(f"  mqtt.url: broker {HOST}:{tls_broker.port}"), r.stderr
        assert "TLS handshake failed" in problems[0]
        assert ("CERTIFICATE_VERIFY_FAILED" if case == "wrong_ca" else "CERTIFICATE_REQUIRED") in problems[0]


def test_tls_files_that_do_not_load_are_named(pki: Pki, tmp_path: Path) -> None:
    """A missing CA, a wrong key password or TLS files on a plain mqtt:// URL: a ConfigError
    naming the key, and never the password."""
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: no such file"):
        TlsFiles(tmp_path / "nope.pem").context()
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.cert_file") as err:
        TlsFiles(pki.ca, pki.client_cert, pki.client_key, "wrong-password").context()
    assert "wrong-password" not in str(err.value)
    # An encrypted key without a password: an error, not OpenSSL's prompt on the terminal.
    with pytest.raises(ConfigError, match="no key_password for an encrypted key"):
        TlsFiles(pki.ca, pki.client_cert, pki.client_key, None).context()
    cfg = write_site(tmp_path, site_id="tlsplain", mqtt_url="mqtt://127.0.0.1:1883", db_url="sqlite:///x.db")
    with cfg.open("a") as fh:
        fh.write(_tls_toml(pki, "mqtt.tls"))
    r = _edge("check-config", str(cfg))
    assert r.returncode == 2
    assert "use mqtts://" in r.stderr


def test_dashboard_tls_flags_are_checked_at_start(pki: Pki, tmp_path: Path) -> None:
    """`edge tui` with TLS flags on a plain mqtt:// URL, or a CA file that does not exist:
    exit 2 and one line, before any screen opens."""
    base = [sys.executable, "-m", "edge.app.cli", "tui", "--site", "x"]
    r = subprocess.run([*base, "--broker", "mqtt://127.0.0.1:1", "--tls-ca", str(pki.ca)],
                       capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "need an mqtts:// broker URL" in r.stderr
    r = subprocess.run([*base, "--broker", "mqtts://127.0.0.1:1", "--tls-ca", str(tmp_path / "nope.pem")],
                       capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "no such file" in r.stderr
    assert r.stderr.count("\n") == 1
