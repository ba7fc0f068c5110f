"""Response and request shapes, for the OpenAPI schema and for clients."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from atlas.contract import BatchContent


class Queued(BaseModel):
    """202: the batch is queued and will be stored exactly once."""

    status: Literal["queued"] = "queued"
    batch_id: str
    accepted: int = Field(description="Number of logs in the batch")


class Duplicate(BaseModel):
    """200: this batch_id was already accepted; nothing more will be stored."""

    status: Literal["duplicate"] = "duplicate"
    batch_id: str


class Problem(BaseModel):
    """4xx or 503: why the batch was not accepted. Never contains key material."""

    detail: str
    field: str | None = None


class Violation(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class SchemaProblem(BaseModel):
    """422: the decrypted plaintext breaks the record schema."""

    detail: list[Violation]


class EncryptedBody(BaseModel):
    """Wire contract v1 envelope (see docs/protocol.md)."""

    v: Literal[1]
    alg: Literal["AES-256-GCM"]
    kid: str = Field(pattern=r"^[0-9a-f]{16}$")
    batch_id: str = Field(description="UUID")
    created_at: str = Field(description="RFC 3339 UTC, e.g. 2026-11-28T16:00:00Z")
    compression: Literal["gzip", "none"]
    nonce: str = Field(description="base64 of 12 random bytes, not all zero")
    salt: str | SkipJsonSchema[None] = Field(  # optional, but never null
        default=None,
        description="base64 of 32 random bytes: the batch is sealed under HKDF-SHA256(shared key, salt, "
        '"atlas v1 batch key"); absent: sealed under the shared key itself (older agents)',
    )
    ciphertext: str = Field(description="base64 of AES-GCM ciphertext followed by its 16-byte tag")


class PlaintextBody(BatchContent):
    """Unencrypted body, accepted only where the server allows plaintext."""

    v: Literal[1]
    batch_id: str
    created_at: str


class HpkeKey(BaseModel):
    """A server HPKE public key (contract v2, docs/protocol.md section 17.2)."""

    suite: str
    kid: str
    public_key: str


_IDENTITY = r"^[\x21-\x7e]+$"


class EnrollRequest(BaseModel):
    """``POST /api/fleet/enroll``: a Mac asks to become a device (docs/protocol.md section 18.4)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enroll_secret: str = Field(max_length=128)
    hardware_uuid: str = Field(min_length=1, max_length=64, pattern=_IDENTITY)
    serial_number: str = Field(min_length=1, max_length=64)
    machine_id: str = Field(min_length=1, max_length=128)
    hostname: str = Field(default="", max_length=255)
    public_key: str = Field(
        min_length=44, max_length=44, description="base64 of the device's raw 32-byte Ed25519 public key"
    )


class Enrolled(BaseModel):
    """201: the Mac is now a device; it signs every request with its key from now on."""

    device_id: str
    machine_id: str
    replaced_device_id: str | None = Field(default=None, description="The device of this Mac it replaced, if any")
    hpke_keys: list[HpkeKey] = Field(description="The server's public keys, the current one first")


class QueuedV2(Queued):
    hpke_keys: list[HpkeKey]


class DuplicateV2(Duplicate):
    hpke_keys: list[HpkeKey]
