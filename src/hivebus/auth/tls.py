"""TLS on the hub's client port: a CA of the hub's own in ``<data-dir>/tls/``, or the operator's.

``HubTLS.ensure(data_dir)`` creates, once, a private CA (``ca.pem``, ``ca.key``) and a server
certificate it signs (``server.pem``, ``server.key``) for this machine's names: localhost,
127.0.0.1, ::1, the host name and any ``hosts`` the operator adds (``--tls-host hub.example.org``);
a later start with a new name re-issues the server certificate from the same CA, so clients
that trust the CA keep working. Keys are EC P-256, readable by their owner only.

Clients verify the hub against the CA and nothing else (``client_context``): the public trust
store is not consulted, so a certificate some other CA issued for the hub's name is refused.
The CA reaches clients inside their credential file (``hivebus node add`` embeds it; see
``auth.credentials``) or as ``HIVEBUS_TLS_CA=<file>`` for connections without credentials.

Per-node certificates: on the client port nats-server asks for client certificates only with
``verify: true`` (or ``verify_and_map``), which requires one of every client -- users' laptops
and the public identity too (measured on nats-server 2.15). So a hub with its own CA opens a
second listener for nodes only, nats-server's websocket listener with ``tls { verify: true }``
against the hub's CA (``node_block``, on ``node_port``, kept in ``<data-dir>/tls/node-port``).
``issue_node_cert`` gives a node a client certificate (CN ``node-<ID>``) signed by the CA and
keeps the certificate (not its key) in ``<data-dir>/tls/nodes/<ID>.pem``; the auth callout
(``auth.callout.check_node_certificate``) lets a connection on the node listener in only as the
node that certificate was issued to, and a node holding one only on the node listener. The
node's credential carries the certificate, its key and the listener's URL (``auth.credentials``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hivebus.bus.ports import free_ports
from hivebus.errors import SetupError

TLS_DIR: Final = "tls"
CA_FILE: Final = "ca.pem"
ACTIVE: Final = "active"  # present while the hub of this data dir runs with TLS
_CA_KEY: Final = "ca.key"
_SERVER_CERT: Final = "server.pem"
_SERVER_KEY: Final = "server.key"
_CA_YEARS: Final = 10
_SERVER_DAYS: Final = 825  # what browsers and most TLS stacks accept for a leaf
_NODE_CERTS: Final = "nodes"  # <ID>.pem: the client certificate each node was issued last
_NODE_PORT: Final = "node-port"  # the node listener's port, chosen once


def default_hosts() -> list[str]:
    return ["localhost", "127.0.0.1", "::1", socket.gethostname()]


@dataclass(frozen=True)
class HubTLS:
    """The files nats-server's ``tls { }`` block names, and the CA clients trust."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    node_port: int | None = None  # the node listener (client certificates): only with the hub's own CA

    @classmethod
    def ensure(cls, data_dir: Path, hosts: Sequence[str] = ()) -> HubTLS:
        """The hub's CA and server certificate in ``<data_dir>/tls``, made or completed now."""
        directory = Path(data_dir) / TLS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        names = list(dict.fromkeys([*default_hosts(), *hosts]))
        ca_file, ca_key = directory / CA_FILE, directory / _CA_KEY
        if not ca_file.exists() or not ca_key.exists():
            _write_pair(ca_file, ca_key, *_new_ca())
        cert_file, key_file = directory / _SERVER_CERT, directory / _SERVER_KEY
        if not cert_file.exists() or not key_file.exists() or not _covers(cert_file, ca_file, names):
            _write_pair(cert_file, key_file, *_new_server_cert(ca_file, ca_key, names))
        return cls(cert_file, key_file, ca_file, node_port=_node_port(directory))

    @classmethod
    def provided(cls, data_dir: Path, cert: Path, key: Path, ca: Path) -> HubTLS:
        """The operator's own certificate and key, and the CA that issued the certificate (copied
        to ``<data_dir>/tls/ca.pem``, where the hub's credentials and local clients find it)."""
        for what, path in (("certificate", cert), ("key", key), ("CA", ca)):
            if not Path(path).is_file():
                raise SetupError(f"TLS {what} file {path} does not exist", hint="give PEM files: --tls-cert, --tls-key, --tls-ca")
        client_context(Path(ca).read_text())  # a clear error now rather than at the first client
        directory = Path(data_dir) / TLS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        copy = directory / CA_FILE
        copy.write_bytes(Path(ca).read_bytes())
        return cls(Path(cert), Path(key), copy)

    @classmethod
    def choose(cls, data_dir: Path, *, enabled: bool, hosts: Sequence[str] = (),
               files: tuple[Path | None, Path | None, Path | None] = (None, None, None)) -> HubTLS | None:
        """What ``--tls``/``--tls-host``/``--tls-cert --tls-key --tls-ca`` ask for, made ready and
        recorded (``activate``); None: no TLS."""
        given = [f for f in files if f is not None]
        if given and len(given) != 3:
            raise SetupError("--tls-cert, --tls-key and --tls-ca go together", hint="give all three, or none for the hub's own CA")
        tls = cls.provided(data_dir, *given) if given else cls.ensure(data_dir, hosts) if enabled else None
        cls.activate(data_dir, tls)
        return tls

    @staticmethod
    def activate(data_dir: Path, tls: HubTLS | None) -> None:
        """Record whether the hub of ``data_dir`` runs with TLS: its credentials carry the CA
        only then, so a hub started again without TLS does not hand out a CA nobody serves."""
        marker = Path(data_dir) / TLS_DIR / ACTIVE
        if tls is None:
            marker.unlink(missing_ok=True)
        else:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(tls.cert_file.resolve()) + "\n")

    def ca_pem(self) -> str:
        return self.ca_file.read_text()

    def server_block(self) -> str:
        """The body of nats-server's ``tls { }`` block: TLS required on the client port."""
        q = json.dumps
        # handshake_first auto: hivebus clients start with the TLS handshake, so a client that
        # holds the CA never sends its password to a server that does not prove itself first
        # (no downgrade to plaintext); other clients get INFO after 50 ms and upgrade as usual.
        return (f"  cert_file: {q(str(self.cert_file.resolve()))}\n"
                f"  key_file: {q(str(self.key_file.resolve()))}\n"
                "  handshake_first: auto\n"
                "  timeout: 5")


    def node_block(self) -> str | None:
        """The body of the node listener's ``tls { }`` (nats-server's ``websocket``): a client
        certificate from the hub's CA required of every connection; None without one."""
        if self.node_port is None:
            return None
        q = json.dumps
        return (f"    cert_file: {q(str(self.cert_file.resolve()))}\n"
                f"    key_file: {q(str(self.key_file.resolve()))}\n"
                f"    ca_file: {q(str(self.ca_file.resolve()))}\n"
                "    verify: true\n"
                "    timeout: 5")

    def leafnode_block(self) -> str:
        """The body of the hub's ``leafnodes { tls { } }``: site leaves link over TLS only (they
        trust the CA from their site credential, ``auth.sites``)."""
        q = json.dumps
        return (f"    cert_file: {q(str(self.cert_file.resolve()))}\n"
                f"    key_file: {q(str(self.key_file.resolve()))}\n"
                "    timeout: 5")


def issue_leaf_cert(data_dir: Path, hosts: Sequence[str]) -> tuple[str, str]:
    """A server certificate and key (PEM) for a site leaf's client port, signed by the hub's own
    CA in ``<data_dir>/tls``: nodes whose credentials carry that CA then trust the leaf too."""
    directory = Path(data_dir) / TLS_DIR
    ca_file, ca_key = directory / CA_FILE, directory / _CA_KEY
    if not ca_key.exists():
        raise SetupError(
            "this hub's TLS CA is not its own (--tls-cert/--tls-key/--tls-ca): it cannot issue the site leaf's certificate",
            hint="issue one for the leaf's names from your CA and run `hivebus site run --tls-cert --tls-key`, "
            "or run the hub with its own CA (--tls alone)",
        )
    cert, key = _new_server_cert(ca_file, ca_key, list(dict.fromkeys(hosts)))
    return cert.decode(), key.decode()


@dataclass(frozen=True)
class NodeCert:
    """A node's client certificate and key (PEM), and the node listener it is for."""

    cert: str
    key: str
    port: int

    def url(self, hub_url: str) -> str:
        """The node listener at the host of ``hub_url`` (the client port's URL)."""
        host = urlsplit(hub_url if "://" in hub_url else f"nats://{hub_url}").hostname or "127.0.0.1"
        return f"wss://{f'[{host}]' if ':' in host else host}:{self.port}"


def issue_node_cert(data_dir: Path, node: str) -> NodeCert | None:
    """A client certificate for ``node`` (CN ``node-<ID>``) signed by the hub's own CA, recorded
    as the only one that node may use (a previous one stops working); None, and any previous
    record dropped, when the hub of ``data_dir`` has no TLS or its CA is not its own."""
    directory = Path(data_dir) / TLS_DIR
    ca_file, ca_key = directory / CA_FILE, directory / _CA_KEY
    record = directory / _NODE_CERTS / f"{node}.pem"
    port = _recorded_port(directory)
    if not _own_ca_active(directory) or not ca_key.exists() or port is None:
        record.unlink(missing_ok=True)
        return None
    cert, key = _new_client_cert(ca_file, ca_key, node_cert_name(node))
    record.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_bytes(cert)
    os.replace(tmp, record)
    return NodeCert(cert.decode(), key.decode(), port)


def node_cert_name(node: str) -> str:
    return f"node-{node}"


def issued_node_cert(data_dir: Path, node: str) -> bytes | None:
    """The DER of the certificate ``node`` was issued last, while the hub runs with TLS."""
    if hub_ca(data_dir) is None:
        return None
    try:
        return cert_der((Path(data_dir) / TLS_DIR / _NODE_CERTS / f"{node}.pem").read_bytes())
    except OSError:
        return None


def cert_der(pem: bytes | str) -> bytes | None:
    """A PEM certificate's DER (what the callout compares), None for one that does not parse."""
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem).public_bytes(
            serialization.Encoding.DER)
    except ValueError:
        return None


def server_tls_block(cert_file: Path, key_file: Path) -> str:
    """A client port's ``tls { }`` body for ``cert_file``/``key_file`` (as ``HubTLS.server_block``)."""
    return HubTLS(cert_file, key_file, cert_file).server_block()


def hub_ca(data_dir: Path) -> Path | None:
    """The CA file of the hub whose data dir this is, if it runs with TLS."""
    path = Path(data_dir) / TLS_DIR / CA_FILE
    return path if path.exists() and (path.parent / ACTIVE).exists() else None


def client_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` only and checks the hub's name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise SetupError(f"the hub's CA is not a PEM certificate ({exc})",
                         hint="use the hub's <data-dir>/tls/ca.pem, or a credential from `hivebus node add`") from None
    return context


# --- certificates --------------------------------------------------------------


def _new_ca() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hivebus"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"hivebus hub CA ({socket.gethostname()})")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * _CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _load_ca(ca_file: Path, ca_key_file: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The hub's CA certificate and its key, to sign with."""
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise SetupError(f"{ca_key_file} is not the EC key hivebus made", hint=f"remove {ca_file.parent} to start a new CA")
    return ca, ca_key


def _new_server_cert(ca_file: Path, ca_key_file: Path, hosts: Sequence[str]) -> tuple[bytes, bytes]:
    ca, ca_key = _load_ca(ca_file, ca_key_file)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "hivebus hub")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _new_client_cert(ca_file: Path, ca_key_file: Path, name: str) -> tuple[bytes, bytes]:
    ca, ca_key = _load_ca(ca_file, ca_key_file)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hivebus"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:hivebus:{name}")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _node_port(directory: Path) -> int:
    """The node listener's port: chosen once (a free one), then kept in ``node-port`` (edit it
    to choose another; the node credentials issued before name the old one)."""
    port = _recorded_port(directory)
    if port is None:
        port = free_ports(1, "127.0.0.1")[0]
        (directory / _NODE_PORT).write_text(f"{port}\n")
    return port


def _own_ca_active(directory: Path) -> bool:
    """Whether the hub runs with TLS from its own CA (not the operator's certificate)."""
    try:
        return (directory / ACTIVE).read_text().strip() == str((directory / _SERVER_CERT).resolve())
    except OSError:
        return False


def _recorded_port(directory: Path) -> int | None:
    try:
        port = int((directory / _NODE_PORT).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _covers(cert_file: Path, ca_file: Path, hosts: Sequence[str]) -> bool:
    """Whether the server certificate is this CA's, still valid for a month, and names every host."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # anything unreadable or foreign is re-issued
        return False
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=30):
        return False
    present = {str(n.value) for n in names}
    return all(str(_general_name(h).value) in present for h in hosts)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_pair(cert_path: Path, key_path: Path, cert: bytes, key: bytes) -> None:
    for path, data, mode in ((key_path, key, 0o600), (cert_path, cert, 0o644)):
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
