"""Response and request shapes, for the OpenAPI schema and for clients."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
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
