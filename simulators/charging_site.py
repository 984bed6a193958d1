"""What stands between the charging simulator and the edge: the site link and certificates.

`SiteLink` is the edge-to-site TCP link in front of the OPC UA server: cut, open
connections stop carrying bytes and new ones are refused, like a dead cellular modem; on
recovery old connections are reset. `make_test_certificates` makes the self-signed
certificates tests and demos run the secure channel with; `make_tls_certificates` a test CA and
the server certificate of an OCPP central system on wss:// (security profile 2).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devices.profiles.charging import ChargePointProfile
from devices.protocols.opcua import cert_file, quiet_asyncua, string_node_id
from edge.events import Value
from edge.tasks import cancel_and_wait

APPLICATION_URI = "urn:dos-edge:simulator:charging"


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """Server certificate and key (PEM or DER); `trusted_client_certs` empty: any client cert.

    With security the server offers Basic256Sha256 SignAndEncrypt and nothing else.
    """

    cert_path: Path
    key_path: Path
    trusted_client_certs: tuple[Path, ...] = ()


class SiteLink:
    """The edge-to-site TCP link in front of the OPC UA server; `cut()` silences it."""

    def __init__(self, host: str, port: int, target_port: int) -> None:
        self.host, self.port, self.target_port = host, port, target_port
        self.up = True
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst, name in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            task = asyncio.create_task(self._pump(src, dst), name=f"charging_sim.link[{self.port}].{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.up:  # a cut link swallows bytes: no answer, no reset
                    dst.write(data)
                    await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(dst)
            dst.transport.abort()

    async def cut(self) -> None:
        """Go silent: open connections carry nothing, new ones are refused."""
        self.up = False
        if self._server is not None:
            self._server.close()
            self._server = None

    async def restore(self) -> None:
        """Come back: reset the connections that went silent, accept again."""
        self.up = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        if self._server is None:
            await self.listen()

    async def close(self) -> None:
        self.up = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        await cancel_and_wait(list(self._tasks))


def trusted_validator(paths: tuple[Path, ...]) -> Any:
    """An asyncua certificate validator that admits only the client certificates in `paths`."""
    trusted: set[bytes] = set()
    for p in paths:
        raw = p.read_bytes()
        cert = (
            x509.load_pem_x509_certificate(raw)
            if raw.startswith(b"-----")
            else x509.load_der_x509_certificate(raw)
        )
        trusted.add(cert.public_bytes(serialization.Encoding.DER))

    async def validate(cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        if cert.public_bytes(serialization.Encoding.DER) not in trusted:
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

    return validate


async def build_server(
    profile: ChargePointProfile, security: ServerSecurity | None, initial: Mapping[str, Mapping[str, Value]]
) -> tuple[Server, int, dict[str, dict[str, ua.NodeId]], dict[str, tuple[str, str]]]:
    """An asyncua server with one object per charge point, its points set to `initial`.

    Returns the server, the profile's namespace index, the node ids per charge point and
    point, and the routes (node id string -> (cp_id, point)) the write callbacks look up.
    A point missing from `initial` starts at its type's default.
    """
    quiet_asyncua()
    server = Server()
    server.disable_clock()  # its 1 s CurrentTime loop would hold every stop() for up to a second
    await server.init()
    server.set_server_name("DOS Edge charging simulator")
    await server.set_application_uri(APPLICATION_URI)
    server.set_identity_tokens([ua.AnonymousIdentityToken])  # the channel authenticates, not users
    if security is None:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    else:
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        cert, key = cert_file(security.cert_path), cert_file(security.key_path)
        await server.load_certificate(cert.path_or_content, cert.extension)
        await server.load_private_key(key.path_or_content, format=key.extension)
        if security.trusted_client_certs:
            server.set_certificate_validator(trusted_validator(security.trusted_client_certs))
    ns = await server.register_namespace(profile.namespace)
    folder = await server.nodes.objects.add_folder(
        string_node_id(profile.folder, ns), ua.QualifiedName(profile.folder, ns)
    )
    all_nodes: dict[str, dict[str, ua.NodeId]] = {}
    routes: dict[str, tuple[str, str]] = {}
    for cp_id, values in initial.items():
        obj = await folder.add_object(string_node_id(cp_id, ns), ua.QualifiedName(cp_id, ns))
        nodes: dict[str, ua.NodeId] = {}
        for pt in profile.points:
            sid = profile.node_id(cp_id, pt.name)
            value = values.get(pt.name, pt.type.default)
            var = await obj.add_variable(
                string_node_id(sid, ns),
                ua.QualifiedName(pt.name, ns),
                ua.Variant(value, getattr(ua.VariantType, pt.type.value)),
            )
            if pt.writable:
                await var.set_writable()
            nodes[pt.name] = var.nodeid
            routes[sid] = (cp_id, pt.name)
        all_nodes[cp_id] = nodes
    return server, ns, all_nodes, routes


# -- certificates for tests and demos ---------------------------------------------------


def _self_signed(common_name: str, uri: str, key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(uri),
                    x509.DNSName("localhost"),
                    x509.DNSName(socket.gethostname()),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def make_test_certificates(directory: Path) -> tuple[Path, Path, Path, Path]:
    """Self-signed server and client certificates (DER) and keys (PEM) in `directory`.

    Returns (server_cert, server_key, client_cert, client_key). The client certificate
    carries the driver's application URI (devices.charging.CLIENT_APPLICATION_URI).
    """
    from devices.protocols.opcua import CLIENT_APPLICATION_URI

    directory.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for stem, uri in (("server", APPLICATION_URI), ("client", CLIENT_APPLICATION_URI)):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(f"dos-edge {stem}", uri, key)
        cert_path, key_path = directory / f"{stem}_cert.der", directory / f"{stem}_key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        out += [cert_path, key_path]
    return out[0], out[1], out[2], out[3]


def make_tls_certificates(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A test CA and a server certificate it signed for `host` (an IP address), all PEM, in
    `directory`: (ca_cert, server_cert, server_key). For an OCPP central system on wss://
    (security profile 2); the simulated charge points trust `ca_cert`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dos-edge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ocpp_ca.pem", directory / "ocpp_server.pem", directory / "ocpp_server_key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths
