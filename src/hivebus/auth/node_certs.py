"""Per-node certificates, as the hub's auth callout checks them (``auth.callout.answer``).

A hub with its own CA opens a node listener (nats-server's websocket port with ``tls { verify:
true }``, ``auth.tls.HubTLS.node_block``): nats-server lets a connection through its TLS
handshake there only with a client certificate the hub's CA signed, and hands the verified
chain to the callout (``client_tls.verified_chains``, leaf first; measured on nats-server
2.15.1, with ``client_info.type`` ``"websocket"``). ``refusal`` then decides, after the
password check:

- on the node listener, only a node, presenting exactly the certificate the hub issued it last
  (``auth.tls.issue_node_cert``; compared byte for byte, so another node's certificate, one
  replaced by ``--rotate`` and any other the CA may have signed are refused);
- a node the hub issued a certificate to connects only there: on the client port (where
  nats-server asks nobody for a certificate, so that users and the public identity need none)
  its password alone does not let it in.

A removed node is refused before this check (its identity is gone), certificate or not.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from hivebus.auth.permissions import NODE_PREFIX
from hivebus.auth.tls import issued_node_cert

NODE_LISTENER: Final = "websocket"  # client_info.type of a connection on the node listener


def refusal(name: str, request: Mapping[str, Any], data_dir: Path) -> str | None:
    """Why the connection the callout has just identified as ``name`` may not connect where it
    did, given the server's authorization request; None: it may."""
    info = request.get("client_info") or {}
    on_listener = info.get("type") == NODE_LISTENER
    node = name.removeprefix(NODE_PREFIX) if name.startswith(NODE_PREFIX) else None
    issued = issued_node_cert(data_dir, node) if node is not None else None
    if not on_listener and issued is None:
        return None  # the common case, decided without reading the chain
    return judge(name, on_node_listener=on_listener, presented=presented_cert(request), issued=issued)


def judge(name: str, *, on_node_listener: bool, presented: x509.Certificate | None, issued: bytes | None) -> str | None:
    """The decision itself: ``presented`` is the client's verified leaf certificate, ``issued``
    the DER of the certificate the hub issued to the node ``name`` claims (None: none)."""
    node = name.removeprefix(NODE_PREFIX) if name.startswith(NODE_PREFIX) else None
    if not on_node_listener:
        if issued is None:
            return None
        return (f"{name} holds a client certificate from this hub: it connects on the node listener "
                "(node_url in its credential), not the client port")
    if node is None:
        return f"the node listener is for nodes only ({name or 'no identity'}): connect on the client port"
    if issued is None:
        return f"{name} has no client certificate from this hub: `hivebus node add {node} --rotate` issues one"
    if presented is None:
        return f"{name} presented no verified client certificate"
    if hmac.compare_digest(presented.public_bytes(serialization.Encoding.DER), issued):
        return None
    holder = common_name(presented)
    if holder != name:
        return f"{name} presented the certificate of {holder or 'someone else'}"
    return f"{name} presented an earlier certificate of its own, replaced by `hivebus node add --rotate`"


def presented_cert(request: Mapping[str, Any]) -> x509.Certificate | None:
    """The client's leaf certificate, as nats-server verified it (the first of the first chain)."""
    chains = (request.get("client_tls") or {}).get("verified_chains") or []
    if not chains or not chains[0]:
        return None
    try:
        return x509.load_pem_x509_certificate(str(chains[0][0]).encode())
    except ValueError:
        return None


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
