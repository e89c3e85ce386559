"""MQTT credentials of real devices, and the Mosquitto password and ACL files made from them.

Each real device (``"simulated": false``) gets an MQTT username, its registered name, and a
random password when a platform configurer registers it; ``POST
/api/devices/<name>/mqtt-credentials`` issues a new one, which replaces the old. The password
is shown once, in that answer; the registry keeps only its hash (``mqtt_credentials``), in
the form Mosquitto's password file takes: PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte
random salt, written ``$7$<iterations>$<base64 salt>$<base64 hash>`` (``mosquitto_passwd``'s
default since Mosquitto 2.0).

With ``device.mqtt_password_file`` and ``device.mqtt_acl_file`` set, the device manager
(``MqttAuthFiles.write``, at its start and after every ``DeviceChanged``) rewrites both from
the registry, so they hold exactly the real devices registered with credentials, plus the
gateway's own user (the ``user:password`` of ``device.mqtt_url``):

* password file: ``<username>:<hash>``, one line each;
* ACL file: the gateway may read and write all of ``<prefix>/#``; a sensor may publish only
  ``<prefix>/<device>/data`` and ``<prefix>/<device>/frame``; a controller may publish only
  ``<prefix>/<device>/state`` and subscribe only to ``<prefix>/<device>/commands``. Nothing
  else is allowed: no device reads or writes another's topics.

Each file is written to a temporary file in its folder (mode 0600) and renamed over the old
one, so Mosquitto never reads half a file; a file whose text is unchanged is not rewritten.
After a change Mosquitto is told to reload: SIGHUP to the pid in ``device.mqtt_pid_file``, or
``device.mqtt_reload_command`` run. On reload Mosquitto drops connected clients whose
credentials are no longer in the file (a deleted device, a replaced password).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from device_manager.models import DeviceRow, DeviceTypeRow, MqttCredentialRow
from platform_core.blobstore import write_atomically as write_file_atomically
from platform_core.db import Database, utcnow
from platform_sdk.device_documents import DEVICE_NAME_PATTERN
from platform_sdk.errors import BadRequest, Conflict
from platform_sdk.settings import Settings

log = logging.getLogger(__name__)

HASH_ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12  # mosquitto_passwd's salt length
PASSWORD_BYTES = 24  # random bytes of an issued password (32 URL-safe characters)
# What Mosquitto's file parsers take as one token: no whitespace, no ':' (the password file's
# separator), no MQTT wildcard in a topic prefix.
_USERNAME = re.compile(r"[^\s:#+]{1,64}")
_PREFIX = re.compile(r"[^\s#+]+(/[^\s#+]+)*")


# --- hashes -------------------------------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """``password`` as a Mosquitto password file holds it: ``$7$<iterations>$<salt>$<hash>`` (base64)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_matches(password: str, hashed: str) -> bool:
    """Whether ``password`` is the one ``hashed`` (``$7$...``) was made from."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[:2] != ["", "7"] or not parts[2].isdigit():
        return False
    try:
        salt, expected = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]))
    return hmac.compare_digest(digest, expected)


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


# --- credentials in the registry ----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a real device connects with; the password exists only in the answer that issued it."""

    username: str
    password: str

    def as_json(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def issue(session: Session, device: str) -> Credentials:
    """A new password for real device ``device``, its hash replacing any earlier one.

    ``Conflict`` for a simulated device (its simulator speaks for it, over Kafka). The caller
    reads the device first (``registry.read_device``: ``NotFound``).
    """
    row = session.get(DeviceRow, device)
    assert row is not None, "read the device first"
    if row.simulated:
        raise Conflict(
            f"device {device!r} is simulated: only real (MQTT) devices get MQTT credentials",
            details=[{"field": "simulated", "reason": "a simulated device has no MQTT credentials"}],
        )
    password = new_password()
    restore(session, device, hash_password(password))
    return Credentials(username=device, password=password)


def stored_hash(session: Session, device: str) -> str | None:
    """The hash kept for ``device``; None when it has no credentials."""
    row = session.get(MqttCredentialRow, device)
    return None if row is None else row.password_hash


def restore(session: Session, device: str, password_hash: str | None) -> None:
    """Keep ``password_hash`` as ``device``'s (None: no credentials); undoes ``issue``."""
    row = session.get(MqttCredentialRow, device)
    if password_hash is None:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = MqttCredentialRow(device=device)
        session.add(row)
    row.password_hash = password_hash
    row.issued_at = utcnow()
    session.flush()


def forget(session: Session, devices: list[str]) -> None:
    """Drop the credentials of ``devices`` (deleted ones)."""
    if devices:
        session.execute(sa.delete(MqttCredentialRow).where(MqttCredentialRow.device.in_(devices)))


# --- the files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    username: str
    password_hash: str
    kind: str  # "gateway", "sensor" or "controller"


def acl_lines(prefix: str, user: _User) -> list[str]:
    """The ACL file's lines for one user."""
    lines = [f"user {user.username}"]
    if user.kind == "gateway":
        return [*lines, f"topic readwrite {prefix}/#"]
    own = f"{prefix}/{user.username}"
    if user.kind == "sensor":
        return [*lines, f"topic write {own}/data", f"topic write {own}/frame"]
    return [*lines, f"topic write {own}/state", f"topic read {own}/commands"]


def write_atomically(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` (mode 0600) through a temporary file; False when it held it already."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    write_file_atomically(path, [text.encode()], make_folder=True)  # its temporary file is 0600 (mkstemp)
    return True


def broker_address(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """(host, port, tls, username, password) of ``mqtt://[user:password@]HOST[:PORT]`` (or ``mqtts://``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise BadRequest(f"device.mqtt_url {url!r} is not mqtt://HOST:PORT (or mqtts://HOST:PORT)")
    try:
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"device.mqtt_url {url!r}: {exc}") from exc
    tls = parts.scheme == "mqtts"
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port or (8883 if tls else 1883), tls, username, password


class MqttAuthFiles:
    """Mosquitto's password and ACL files, rewritten from the registry by ``write()``."""

    def __init__(self, settings: Settings, database: Database) -> None:
        device = settings.device
        if device.mqtt_password_file is None or device.mqtt_acl_file is None:
            raise BadRequest("device.mqtt_password_file and device.mqtt_acl_file are set together")
        if not device.mqtt_url:
            raise BadRequest(
                "device.mqtt_password_file needs device.mqtt_url (mqtt://USER:PASSWORD@HOST:PORT)"
            )
        _host, _port, _tls, username, password = broker_address(device.mqtt_url)
        if not username or not password:
            raise BadRequest(
                "device.mqtt_url needs the gateway's user:password (mqtt://USER:PASSWORD@HOST:PORT) "
                "when device.mqtt_password_file is set: the gateway connects with them"
            )
        if not _USERNAME.fullmatch(username) or re.fullmatch(DEVICE_NAME_PATTERN, username):
            raise BadRequest(
                f"device.mqtt_url's user {username!r} must be 1-64 characters without whitespace, ':', "
                "'#' or '+', and no possible device name (which the user of a device would clash "
                "with): use a character device names lack, e.g. 'aiot.gateway'"
            )
        prefix = device.mqtt_topic_prefix.strip("/")
        if not _PREFIX.fullmatch(prefix):
            raise BadRequest(
                f"device.mqtt_topic_prefix {device.mqtt_topic_prefix!r} cannot go into an ACL file: "
                "it needs a topic without whitespace or wildcards (#, +)"
            )
        self.database = database
        self.prefix = prefix
        self.password_file = device.mqtt_password_file.expanduser()
        self.acl_file = device.mqtt_acl_file.expanduser()
        self.pid_file = device.mqtt_pid_file.expanduser() if device.mqtt_pid_file else None
        self.reload_command = list(device.mqtt_reload_command)
        self.reload_timeout_s = device.mqtt_reload_timeout_s
        self._gateway_password = password
        self._gateway = _User(username, hash_password(password), "gateway")

    @classmethod
    def from_settings(cls, settings: Settings, database: Database) -> MqttAuthFiles | None:
        """The files of ``settings``; None when neither is set."""
        if settings.device.mqtt_password_file is None and settings.device.mqtt_acl_file is None:
            return None
        return cls(settings, database)

    def users(self) -> list[_User]:
        """The gateway, then every real device with credentials, by name."""
        query = (
            sa.select(DeviceRow.name, MqttCredentialRow.password_hash, DeviceTypeRow.kind)
            .join(MqttCredentialRow, MqttCredentialRow.device == DeviceRow.name)
            .join(DeviceTypeRow, DeviceTypeRow.name == DeviceRow.type)
            .where(DeviceRow.simulated.is_(False))
            .order_by(DeviceRow.name)
        )
        with self.database.session() as session:
            rows = session.execute(query).all()
        return [self._gateway, *(_User(name, hashed, kind) for name, hashed, kind in rows)]

    def texts(self) -> tuple[str, str]:
        """(password file, ACL file) as the registry says now."""
        users = self.users()
        passwords = "".join(f"{user.username}:{user.password_hash}\n" for user in users)
        header = "# Written by the AIoT device manager from its registry; changes here are overwritten.\n"
        acl = header + "\n".join("\n".join(acl_lines(self.prefix, user)) + "\n" for user in users)
        return passwords, acl

    def write(self) -> bool:
        """Rewrite both files from the registry and reload Mosquitto when either changed; whether one did."""
        on_disk = self._on_disk_gateway_hash()
        if on_disk is not None:  # a restart of the device manager does not change the file
            self._gateway = dataclasses.replace(self._gateway, password_hash=on_disk)
        passwords, acl = self.texts()
        changed = write_atomically(self.acl_file, acl)
        changed = write_atomically(self.password_file, passwords) or changed
        if changed:
            log.info(
                "wrote the MQTT password and ACL files (%d device(s)): %s, %s",
                passwords.count("\n") - 1,
                self.password_file,
                self.acl_file,
            )
            self.reload()
        return changed

    def _on_disk_gateway_hash(self) -> str | None:
        """The gateway's hash in the current password file, when it is its password's."""
        try:
            lines = self.password_file.read_text().splitlines()
        except FileNotFoundError:
            return None
        head = f"{self._gateway.username}:"
        for line in lines:
            if line.startswith(head) and password_matches(self._gateway_password, line[len(head) :]):
                return line[len(head) :]
        return None

    def reload(self) -> None:
        """Tell Mosquitto to read the files again: SIGHUP to its pid, or the reload command."""
        if self.reload_command:
            try:
                subprocess.run(
                    self.reload_command, check=True, timeout=self.reload_timeout_s, capture_output=True
                )
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("cannot reload Mosquitto with %s: %s", self.reload_command, exc)
            return
        if self.pid_file is None:
            log.warning(
                "the MQTT files changed; Mosquitto reads them when it next starts "
                "(set device.mqtt_pid_file or device.mqtt_reload_command to reload it at once)"
            )
            return
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except FileNotFoundError:
            log.warning("no Mosquitto pid file %s: Mosquitto reads the files when it starts", self.pid_file)
        except (ValueError, OSError) as exc:
            log.error("cannot tell Mosquitto (pid file %s) to reload: %s", self.pid_file, exc)
