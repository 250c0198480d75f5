"""The pure parts of per-node certificates: issuing, the callout's decision, the node's URLs,
the credential's format and the node listener in nats-server's config."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from hivebus.auth.credentials import Credential, node_urls
from hivebus.auth.node_certs import common_name, judge, presented_cert, refusal
from hivebus.auth.tls import HubTLS, issue_node_cert, issued_node_cert
from hivebus.bus.server_config import Ports, ServerConfig, render_config
from hivebus.errors import SetupError


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    HubTLS.choose(tmp_path, enabled=True)
    return tmp_path


def der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def test_a_node_certificate_names_the_node_and_is_signed_by_the_hubs_ca(hub: Path) -> None:
    issued = issue_node_cert(hub, "W012")
    assert issued is not None
    cert = x509.load_pem_x509_certificate(issued.cert.encode())
    ca = x509.load_pem_x509_certificate((hub / "tls" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert common_name(cert) == "node-W012"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issued_node_cert(hub, "W012") == der(issued.cert)  # the hub keeps the certificate ...
    assert "PRIVATE KEY" not in (hub / "tls" / "nodes" / "W012.pem").read_text()  # ... not the key
    assert issued.port == HubTLS.ensure(hub).node_port  # the listener's port is kept


def test_issuing_again_replaces_the_record_and_a_hub_without_tls_drops_it(hub: Path) -> None:
    first, second = issue_node_cert(hub, "W012"), issue_node_cert(hub, "W012")
    assert first is not None and second is not None and first.cert != second.cert
    assert issued_node_cert(hub, "W012") == der(second.cert)
    HubTLS.activate(hub, None)  # the hub started again without --tls
    assert issued_node_cert(hub, "W012") is None
    assert issue_node_cert(hub, "W012") is None
    assert not (hub / "tls" / "nodes" / "W012.pem").exists()


def test_a_hub_with_the_operators_certificate_issues_no_node_certificates(tmp_path: Path) -> None:
    own = HubTLS.choose(tmp_path / "own", enabled=True)
    assert own is not None
    theirs = tmp_path / "operator"
    theirs.mkdir()
    files = tuple(theirs / f.name for f in (own.cert_file, own.key_file, own.ca_file))
    for source, copy in zip((own.cert_file, own.key_file, own.ca_file), files, strict=True):
        copy.write_bytes(source.read_bytes())
    provided = HubTLS.choose(tmp_path / "own", enabled=True, files=files)
    assert provided is not None and provided.node_port is None and provided.node_block() is None
    assert issue_node_cert(tmp_path / "own", "W012") is None  # its own CA's key is still there, but not in use


def chain_request(pem: str | None, kind: str = "websocket") -> dict[str, object]:
    request: dict[str, object] = {"client_info": {"type": kind, "kind": "Client"}}
    if pem is not None:
        request["client_tls"] = {"verified_chains": [[pem, "the CA"]]}
    return request


def test_the_callout_accepts_only_the_certificate_issued_to_the_node(hub: Path) -> None:
    w012, w013 = issue_node_cert(hub, "W012"), issue_node_cert(hub, "W013")
    assert w012 is not None and w013 is not None
    assert refusal("node-W012", chain_request(w012.cert), hub) is None
    assert "certificate of node-W013" in str(refusal("node-W012", chain_request(w013.cert), hub))
    assert "no verified client certificate" in str(refusal("node-W012", chain_request(None), hub))
    assert "for nodes only" in str(refusal("public", chain_request(w012.cert), hub))
    assert "no client certificate from this hub" in str(refusal("node-W099", chain_request(w012.cert), hub))
    # on the client port: a node holding a certificate is refused, everyone else decided as before
    assert "node listener" in str(refusal("node-W012", chain_request(None, kind="client"), hub))
    assert refusal("node-W099", chain_request(None, kind="client"), hub) is None
    assert refusal("public", chain_request(None, kind="client"), hub) is None
    replaced = w012.cert
    assert issue_node_cert(hub, "W012") is not None
    assert "earlier certificate" in str(refusal("node-W012", chain_request(replaced), hub))


def test_judge_without_files() -> None:
    assert judge("node-W1", on_node_listener=False, presented=None, issued=None) is None
    assert judge("node-W1", on_node_listener=True, presented=None, issued=b"x") is not None
    assert judge("site-north", on_node_listener=True, presented=None, issued=None) is not None
    assert presented_cert({"client_tls": {"verified_chains": [["not a pem"]]}}) is None
    assert presented_cert({}) is None


@pytest.mark.parametrize(("hub_url", "listener", "expected"), [
    ("tls://hub.example.org:4222", "wss://127.0.0.1:4555", ["wss://hub.example.org:4555", "tls://hub.example.org:4222"]),
    ("nats://10.0.0.5:4222", "wss://localhost:4555", ["wss://10.0.0.5:4555", "nats://10.0.0.5:4222"]),
    ("tls://[::1]:4222", "wss://127.0.0.1:4555", ["wss://[::1]:4555", "tls://[::1]:4222"]),
    ("wss://hub:443", "wss://127.0.0.1:4555", ["wss://hub:443"]),  # given explicitly: as it is
    ("tls://hub:4222", None, ["tls://hub:4222"]),  # no certificate: the client port
])
def test_a_node_with_a_certificate_tries_the_node_listener_first(hub_url: str, listener: str | None,
                                                                 expected: list[str]) -> None:
    assert node_urls(hub_url, listener) == expected


def test_a_credential_with_a_certificate_round_trips_and_loads_into_a_tls_context(hub: Path, tmp_path: Path) -> None:
    issued = issue_node_cert(hub, "W012")
    assert issued is not None
    assert issued.url("tls://hub.example.org:4222") == f"wss://hub.example.org:{issued.port}"
    credential = Credential(user="node-W012", password="pw", inbox_prefix="_INBOX_W012",
                            ca=(hub / "tls" / "ca.pem").read_text(), cert=issued.cert, key=issued.key,
                            node_url=issued.url("tls://127.0.0.1:4222"))
    path = credential.save(tmp_path / "W012.creds")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert Credential.load(path) == credential
    assert credential.tls_context() is not None
    assert credential.node_urls("tls://h:1") == [f"wss://h:{issued.port}", "tls://h:1"]
    assert replace_cert(credential, None).node_urls("tls://h:1") == ["tls://h:1"]
    broken = Credential(user="u", password="p", inbox_prefix="i", ca=credential.ca, cert=issued.cert,
                        key=issue_node_cert(hub, "W013").key)  # type: ignore[union-attr]
    with pytest.raises(SetupError, match="node certificate in the credential is not usable"):
        broken.tls_context()
    old = Credential(user="u", password="p", inbox_prefix="i")  # files written before certificates
    assert "cert" not in old.dumps() and Credential.load(old.save(tmp_path / "old.creds")) == old


def replace_cert(credential: Credential, cert: str | None) -> Credential:
    from dataclasses import replace

    return replace(credential, cert=cert)


def test_the_node_listener_in_the_server_config(tmp_path: Path) -> None:
    tls = HubTLS.choose(tmp_path, enabled=True)
    assert tls is not None and tls.node_port is not None
    config = ServerConfig(store_dir=tmp_path / "nats", tls=tls.server_block(), node_port=tls.node_port,
                          node_tls=tls.node_block())
    text = render_config(config, Ports(4222, 8222, None, None))
    block = text[text.index("websocket {"):]
    assert f'listen: "127.0.0.1:{tls.node_port}"' in block and "verify: true" in block
    assert str((tmp_path / "tls" / "ca.pem").resolve()) in block
    assert "verify" not in text[:text.index("websocket {")]  # the client port asks nobody for a certificate
    with pytest.raises(SetupError, match="go together"):
        ServerConfig(store_dir=tmp_path, node_port=4555)
    with pytest.raises(SetupError, match="not a port"):
        ServerConfig(store_dir=tmp_path, node_port=0, node_tls="x")


def test_the_hubs_own_virtual_nodes_hold_the_certificate_issued_last(hub: Path) -> None:
    """``hivebus up``'s virtual nodes (``HubAuth.node_credential``) on a hub with its own CA:
    a certificate is issued once and kept across starts; after one issued by hand (``hivebus
    node add V001``, whose key the hub does not keep) the next start issues it another, so the
    node is never left holding one the callout refuses."""
    from hivebus.auth.hub import HubAuth

    auth = HubAuth.of_data_dir(hub).ensure()
    path = hub / "V001.creds"
    first = Credential.load(auth.node_credential("V001", path))
    assert first.cert is not None and der(first.cert) == issued_node_cert(hub, "V001")
    assert first.node_url is not None and first.node_url.startswith("wss://")
    again = Credential.load(auth.node_credential("V001", path))
    assert again.cert == first.cert and again.password == first.password
    by_hand = issue_node_cert(hub, "V001")  # the operator's `hivebus node add V001`
    assert by_hand is not None
    taken = Credential.load(auth.node_credential("V001", path))
    assert taken.cert is not None and taken.cert not in (first.cert, by_hand.cert)
    assert der(taken.cert) == issued_node_cert(hub, "V001")  # the one the callout lets in


def test_a_virtual_node_of_a_hub_without_tls_holds_no_certificate(tmp_path: Path) -> None:
    from hivebus.auth.hub import HubAuth

    auth = HubAuth.of_data_dir(tmp_path).ensure()
    held = Credential.load(auth.node_credential("V001", tmp_path / "V001.creds"))
    assert (held.cert, held.key, held.node_url, held.ca) == (None, None, None, None)
