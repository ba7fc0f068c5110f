"""Contract v2 enrollment: this Mac's device key and credentials, kept in the agent's state directory.

``device-key`` holds the Ed25519 private key (base64 of its 32 raw bytes), ``device.json`` the device id,
the machine_id and serial number the server enrolled, the server's address and its HPKE public keys. Both are
written atomically (a temporary file beside them, renamed over) with mode 600: readable only by their owner,
root for the launchd daemon. The key is never logged. docs/protocol.md (section 18.4) is the exchange.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from atlas.contract import ENROLL_PATH, ContractError, DeviceKey, HpkePublicKey, select_public_key

KEY_FILE = "device-key"
CREDENTIALS_FILE = "device.json"
CREDENTIALS_FORMAT = "atlas-device/1"


class EnrollError(Exception):
    """Enrollment failed, or the stored credentials are unreadable; the message is one line for the operator."""


@dataclass(frozen=True)
class Enrollment:
    """What an enrolled agent holds: its key, its device id and identity, and the server's public keys."""

    key: DeviceKey = field(repr=False)
    device_id: str
    machine_id: str
    serial_number: str
    server: str
    hpke_keys: tuple[HpkePublicKey, ...] = field(repr=False)

    @property
    def seal_key(self) -> HpkePublicKey | None:
        """The server key the next batch is sealed to (its first key of the default suite)."""
        return select_public_key(self.hpke_keys)

    def credentials_json(self) -> dict[str, Any]:
        return {
            "format": CREDENTIALS_FORMAT,
            "device_id": self.device_id,
            "machine_id": self.machine_id,
            "serial_number": self.serial_number,
            "server": self.server,
            "public_key": self.key.public_b64,
            "hpke_keys": [k.to_json() for k in self.hpke_keys],
        }


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 600 from the start (``mkstemp`` creates it so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def credentials_path(data_dir: Path) -> Path:
    return data_dir / CREDENTIALS_FILE


def save_credentials(data_dir: Path, enrollment: Enrollment) -> None:
    text = json.dumps(enrollment.credentials_json(), indent=2) + "\n"
    write_private(credentials_path(data_dir), text.encode("utf-8"))


def load_enrollment(data_dir: Path) -> Enrollment | None:
    """The stored enrollment, or None when this agent is not enrolled (no credentials file)."""
    creds_file = credentials_path(data_dir)
    try:
        creds = json.loads(creds_file.read_text(encoding="utf-8"))
        key_text = key_path(data_dir).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if creds_file.exists():
            raise EnrollError(f"{key_path(data_dir)} is missing: enroll again (atlas-agent enroll)") from None
        return None
    except (OSError, ValueError) as exc:
        raise EnrollError(f"cannot read the device credentials in {data_dir}: {exc}") from None
    try:
        key = DeviceKey(base64.b64decode(key_text, validate=True))
        if not isinstance(creds, dict) or creds.get("format") != CREDENTIALS_FORMAT:
            raise ValueError(f"{creds_file} is not of format {CREDENTIALS_FORMAT}")
        if creds["public_key"] != key.public_b64:
            raise ValueError(f"{key_path(data_dir)} is not the key {creds_file} was enrolled with")
        keys = tuple(HpkePublicKey.from_json(k) for k in creds["hpke_keys"])
        return Enrollment(
            key=key,
            device_id=str(creds["device_id"]),
            machine_id=str(creds["machine_id"]),
            serial_number=str(creds["serial_number"]),
            server=str(creds["server"]),
            hpke_keys=keys,
        )
    except (KeyError, TypeError, ValueError, binascii.Error, ContractError) as exc:
        raise EnrollError(f"device credentials unusable ({exc}): enroll again (atlas-agent enroll)") from None


def _problem(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"HTTP {response.status_code}" + (f": {detail}" if detail else "")


def enroll(
    data_dir: Path,
    *,
    server: str,
    secret: str,
    hardware_uuid: str,
    serial_number: str,
    machine_id: str,
    hostname: str,
    ca_bundle: str | None = None,
    timeout_s: float = 30.0,
) -> tuple[Enrollment, str | None]:
    """Enroll with a new device key; store the key and credentials. Returns them and the replaced device id.

    The new key replaces the stored one only once the server has accepted it, so a refused enrollment leaves
    an enrolled agent as it was.
    """
    server = server.rstrip("/")
    key = DeviceKey.generate()
    body = {
        "enroll_secret": secret,
        "hardware_uuid": hardware_uuid,
        "serial_number": serial_number,
        "machine_id": machine_id,
        "hostname": hostname,
        "public_key": key.public_b64,
    }
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    try:
        response = httpx.post(server + ENROLL_PATH, json=body, timeout=timeout_s, verify=verify)
    except httpx.HTTPError as exc:
        raise EnrollError(f"cannot reach {server}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 201:
        raise EnrollError(f"enrollment refused by {server}: {_problem(response)}")
    try:
        answer = response.json()
        enrollment = Enrollment(
            key=key,
            device_id=str(answer["device_id"]),
            machine_id=str(answer["machine_id"]),
            serial_number=serial_number,
            server=server,
            hpke_keys=tuple(HpkePublicKey.from_json(k) for k in answer["hpke_keys"]),
        )
    except (ValueError, KeyError, TypeError, ContractError) as exc:
        raise EnrollError(f"{server} answered the enrollment with an unreadable body: {exc}") from None
    if enrollment.seal_key is None:
        raise EnrollError(f"{server} sent no HPKE public key to seal batches to")
    write_private(key_path(data_dir), base64.b64encode(key.raw) + b"\n")
    save_credentials(data_dir, enrollment)
    replaced = answer.get("replaced_device_id")
    return enrollment, str(replaced) if replaced else None


def with_hpke_keys(enrollment: Enrollment, keys: tuple[HpkePublicKey, ...]) -> Enrollment:
    return replace(enrollment, hpke_keys=keys)
