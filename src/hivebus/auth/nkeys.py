"""NATS nkeys and JWTs, as much as the auth callout needs (``auth.callout``).

An nkey is an ed25519 key written as base32 of ``prefix byte + key + crc16``, the prefix
naming what it is ('A...' an account, 'U...' a user, 'N...' a server; a seed 'S' + the same
letter). A NATS JWT is ``base64url(header).base64url(claims).base64url(signature)``, the
header ``{"typ": "JWT", "alg": "ed25519-nkey"}``, the signature ed25519 over the first two
parts by the key ``iss`` names. That is all nats-server checks here, written after nats-io's
``nkeys`` and ``jwt/v2`` (the Python ``nkeys`` package would add PyNaCl for the same
ed25519 that ``cryptography`` already gives).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ACCOUNT: Final = 0 << 3  # 'A'
SERVER: Final = 13 << 3  # 'N'
USER: Final = 20 << 3  # 'U'
_SEED: Final = 18 << 3  # 'S'
_HEADER: Final = {"typ": "JWT", "alg": "ed25519-nkey"}


class NkeyError(ValueError):
    pass


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def _unb32(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise NkeyError(f"not an nkey: {exc}") from None


def _with_crc(raw: bytes) -> bytes:
    return raw + binascii.crc_hqx(raw, 0).to_bytes(2, "little")  # crc16 (xmodem), as nkeys


def _checked(text: str) -> bytes:
    raw = _unb32(text)
    if len(raw) < 3 or binascii.crc_hqx(raw[:-2], 0).to_bytes(2, "little") != raw[-2:]:
        raise NkeyError("nkey checksum does not match")
    return raw[:-2]


def encode_public(prefix: int, key: bytes) -> str:
    return _b32(_with_crc(bytes([prefix]) + key))


def decode_public(text: str, prefix: int) -> bytes:
    raw = _checked(text)
    if raw[0] != prefix or len(raw) != 33:
        raise NkeyError(f"{text[:8]}... is not the public nkey expected")
    return raw[1:]


def is_public(text: str, prefix: int) -> bool:
    try:
        decode_public(text, prefix)
    except NkeyError:
        return False
    return True


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key with its nkey kind (``prefix``)."""

    prefix: int
    private: Ed25519PrivateKey

    @classmethod
    def create(cls, prefix: int) -> KeyPair:
        return cls(prefix, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        raw = _checked(seed.strip())
        if len(raw) != 34 or raw[0] & 0xF8 != _SEED:
            raise NkeyError("not an nkey seed")
        prefix = ((raw[0] & 0x07) << 5) | ((raw[1] & 0xF8) >> 3)
        return cls(prefix, Ed25519PrivateKey.from_private_bytes(raw[2:]))

    @property
    def seed(self) -> str:
        raw = self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
        return _b32(_with_crc(bytes([_SEED | (self.prefix >> 5), (self.prefix & 31) << 3]) + raw))

    @property
    def public_key(self) -> str:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return encode_public(self.prefix, raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: dict[str, Any], signer: KeyPair) -> str:
    """``claims`` signed by ``signer`` (its key becomes ``iss``; ``iat`` and ``jti`` are set)."""
    claims = {**claims, "iss": signer.public_key, "iat": int(time.time())}
    claims.pop("jti", None)
    # jti as nats-io's jwt: base32 of sha512/256 over the claims without it
    claims["jti"] = _b32(hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest())
    signed = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signed}.{_b64(signer.sign(signed.encode()))}"


def decode_jwt(token: str, issuer_prefix: int) -> dict[str, Any]:
    """The claims of ``token``, once its signature checks out against its own ``iss`` (an
    nkey of kind ``issuer_prefix``). Raises ``NkeyError``."""
    try:
        header, body, sig = token.strip().split(".")
        claims = json.loads(_unb64(body))
        head = json.loads(_unb64(header))
    except ValueError as exc:
        raise NkeyError(f"not a JWT: {exc}") from None
    if not isinstance(claims, dict) or head.get("alg") != _HEADER["alg"]:
        raise NkeyError("not a NATS JWT")
    key = decode_public(str(claims.get("iss", "")), issuer_prefix)
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(_unb64(sig), f"{header}.{body}".encode())
    except (InvalidSignature, ValueError):
        raise NkeyError("JWT signature does not match its issuer") from None
    return claims
