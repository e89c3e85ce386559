"""The platform's mail to end users: an outbox in the registry database, delivered by SMTP when configured.

This module owns the ``mails`` table (``MailRow``) and the text of the mails the platform
sends. It talks to the registry database (``Database``) and, when ``mail.smtp_host`` is set,
to that SMTP server through ``smtplib``; with no SMTP host, mails stay in the outbox, where the
API and the CLI show them (``list_mails``, ``MailView``, whose ``url`` is the app's address the
mail gives). Times in a mail are the location's wall-clock time with its zone and offset
(``scheduler.local_time``): the instance event carries the location's time zone.

How a mail flows: ``Mailer.record`` checks the address and adds the mail with status
``outbox`` to the caller's session, so the mail exists exactly when the caller's change (an
instance started, a schedule failed) is committed. After the commit the caller hands the mail
to ``Mailer.deliver``, which talks SMTP outside any database transaction (a slow server holds
no transaction open) and then marks the row ``sent`` with ``sent_at``, or ``failed`` with the
reason. ``Mailer.send`` does both for a caller that has no transaction of its own;
``Mailer.send_once`` too, unless the instance already has that mail (events come at least once).
``Mailer.deliver_pending``, called periodically, retries ``outbox`` and ``failed`` mails: those
left behind by a crash between commit and delivery, and those whose server was down.

Retries are bounded two ways: a mail older than ``STALE_AFTER`` is no longer sent (a mail
saying an app runs until noon is useless the next day, and turning SMTP on must not flood
users with the outbox of months), and one ``Mailer`` tries a mail at most ``MAX_ATTEMPTS``
times. The attempt count lives in the ``Mailer`` because ``mails`` has no column for it, so a
restarted process may try a failed mail ``MAX_ATTEMPTS`` times more (still within
``STALE_AFTER``). One ``Mailer`` delivers one mail at a time and re-reads its status first,
so a mail is not sent twice by ``deliver`` and ``deliver_pending`` running in two threads;
only one process (the scheduler) should deliver for a database.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import threading
import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, computed_field
from sqlalchemy.orm import Session

from platform_core.db import Database, utcnow
from platform_sdk.errors import BadRequest, NotFound
from platform_sdk.settings import MailSettings
from scheduler.local_time import local_time
from scheduler.models import MailRow

MAX_ATTEMPTS = 5
STALE_AFTER = timedelta(hours=24)
MAX_LIST_LIMIT = 1000
# RFC 5321 allows 254 characters in a forward path; the column holds 255.
MAX_ADDRESS_LENGTH = 254
MAX_SUBJECT_LENGTH = 255

# An RFC 5322 dot-atom: the unquoted mailbox names people actually have.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(
    r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
# The line before the app's address in the mails that give one; the address is the next line.
OPEN_IT_HERE = "Open it here:"
ITS_NEW_ADDRESS = "Its new address:"
_ADDRESS = re.compile(rf"^(?:{re.escape(OPEN_IT_HERE)}|{re.escape(ITS_NEW_ADDRESS)})\n(\S+)$", re.MULTILINE)


class MailView(BaseModel):
    """One mail as the API and the CLI show it."""

    model_config = ConfigDict(from_attributes=True)

    mail_id: str
    recipient: str
    subject: str
    body: str
    status: str
    error: str | None
    instance_id: str | None
    created_at: datetime
    sent_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def url(self) -> str | None:
        """The app's address the mail gives (running, moved), else None."""
        return app_address(self.body)


def app_address(body: str) -> str | None:
    """The app's address in a mail body written by this module, or None when it gives none."""
    found = _ADDRESS.search(body)
    return found.group(1) if found else None


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a mail address the platform can send to, or None."""
    if not address:
        return "the address is empty"
    if len(address) > MAX_ADDRESS_LENGTH:
        return f"it is longer than {MAX_ADDRESS_LENGTH} characters"
    if not address.isascii():
        return "addresses with non-ASCII characters are not supported"
    if any(char.isspace() or not char.isprintable() for char in address):
        return "it contains whitespace or control characters"
    if address.count("@") != 1:
        return "it needs exactly one @ between the mailbox and the domain (like ada@example.com)"
    local, domain = address.split("@")
    if not _LOCAL_PART.fullmatch(local):
        return f"{local!r} before the @ is not a valid mailbox name"
    if not _DOMAIN.fullmatch(domain):
        return f"{domain!r} after the @ is not a valid domain name"
    return None


class Mailer:
    """Records mails in the outbox and delivers them over SMTP when ``settings.smtp_host`` is set."""

    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings
        self._attempts: dict[str, int] = {}
        # Held for a whole delivery, so two threads never send the same mail.
        self._delivering = threading.Lock()

    @property
    def smtp_configured(self) -> bool:
        return bool(self.settings.smtp_host)

    def record(
        self, session: Session, recipient: str, subject: str, body: str, instance_id: str | None = None
    ) -> MailRow:
        """Add the mail to the outbox in the caller's transaction; deliver it after the commit."""
        problem = address_problem(recipient)
        if problem is not None:
            raise BadRequest(f"cannot mail {recipient!r}: {problem}", details={"recipient": recipient})
        if "\n" in subject or "\r" in subject:
            raise BadRequest(f"mail subject {subject!r} must be one line")
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise BadRequest(f"mail subject is longer than {MAX_SUBJECT_LENGTH} characters: {subject!r}")
        row = MailRow(
            mail_id=uuid.uuid4().hex,
            recipient=recipient,
            subject=subject,
            body=body,
            status="outbox",
            instance_id=instance_id,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row

    def send(
        self, database: Database, recipient: str, subject: str, body: str, instance_id: str | None = None
    ) -> MailView:
        """Record the mail in its own transaction, then deliver it: the mail as it ends up."""
        with database.session() as session:
            mail_id = self.record(session, recipient, subject, body, instance_id).mail_id
        return self.deliver(database, mail_id)

    def send_once(
        self, database: Database, recipient: str, subject: str, body: str, instance_id: str
    ) -> MailView:
        """``send``, unless this instance already has this mail to ``recipient``: the mail as it is.

        Events come at least once; a redelivered "instance running" must not mail the user twice.
        The check and the insert are not atomic, so one consumer should send an instance's mails.
        """
        with database.session() as session:
            existing = session.scalars(
                sa.select(MailRow).where(
                    MailRow.instance_id == instance_id,
                    MailRow.recipient == recipient,
                    MailRow.subject == subject,
                )
            ).first()
            if existing is not None:
                return MailView.model_validate(existing)
        return self.send(database, recipient, subject, body, instance_id)

    def deliver(self, database: Database, mail_id: str) -> MailView:
        """Try to deliver one recorded mail now (no-op without SMTP or once sent): the mail as it ends up."""
        with self._delivering:
            with database.session() as session:
                row = session.get(MailRow, mail_id)
                if row is None:
                    raise NotFound(f"mail {mail_id} not found")
                mail = MailView.model_validate(row)
            host = self.settings.smtp_host
            if not host or mail.status == "sent":
                return mail
            error = self._transmit(host, mail)
            if error is None:
                self._attempts.pop(mail_id, None)
            else:
                self._attempts[mail_id] = self._attempts.get(mail_id, 0) + 1
            with database.session() as session:
                row = session.get(MailRow, mail_id)
                if row is None:
                    raise NotFound(f"mail {mail_id} was deleted while it was being delivered")
                row.status = "failed" if error else "sent"
                row.error = error
                row.sent_at = None if error else utcnow()
                return MailView.model_validate(row)

    def deliver_pending(self, database: Database) -> int:
        """Deliver the ``outbox`` and ``failed`` mails still worth sending; the number sent now."""
        if not self.smtp_configured:
            return 0
        with database.session() as session:
            pending = session.scalars(
                sa.select(MailRow.mail_id)
                .where(MailRow.status.in_(("outbox", "failed")), MailRow.created_at >= utcnow() - STALE_AFTER)
                .order_by(MailRow.created_at)
            ).all()
        return sum(
            self.deliver(database, mail_id).status == "sent"
            for mail_id in pending
            if self._attempts.get(mail_id, 0) < MAX_ATTEMPTS
        )

    def _message(self, mail: MailView) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = mail.recipient
        message["Subject"] = mail.subject
        message["Date"] = format_datetime(mail.created_at)
        # Stable across retries, so a receiver can drop a copy it already has.
        message["Message-ID"] = f"<{mail.mail_id}@{self.settings.sender.rpartition('@')[2] or 'aiot'}>"
        message.set_content(mail.body, charset="utf-8")
        return message

    def _transmit(self, host: str, mail: MailView) -> str | None:
        """One SMTP conversation delivering ``mail``: None when the server took it, else why not."""
        settings = self.settings
        server = f"{host}:{settings.smtp_port}"
        try:
            with smtplib.SMTP(host, settings.smtp_port, timeout=settings.timeout_s) as smtp:
                if settings.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if settings.smtp_username:
                    password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                    smtp.login(settings.smtp_username, password)
                smtp.send_message(self._message(mail))
        except smtplib.SMTPRecipientsRefused as exc:
            replies = "; ".join(_reply(code, text) for code, text in exc.recipients.values())
            return f"SMTP server {server} refused {mail.recipient}: {replies}"
        except smtplib.SMTPSenderRefused as exc:
            reply = _reply(exc.smtp_code, exc.smtp_error)
            return f"SMTP server {server} refused the sender {settings.sender}: {reply}; check mail.sender"
        except smtplib.SMTPAuthenticationError as exc:
            reply = _reply(exc.smtp_code, exc.smtp_error)
            return f"SMTP server {server} refused the login: {reply}; check mail.smtp_username/smtp_password"
        except smtplib.SMTPNotSupportedError as exc:
            return f"SMTP server {server}: {exc}; check mail.smtp_starttls and mail.smtp_username"
        except smtplib.SMTPResponseException as exc:
            return f"SMTP server {server} answered {_reply(exc.smtp_code, exc.smtp_error)}"
        except (smtplib.SMTPException, OSError) as exc:
            # Refused or timed-out connections, unknown hosts, TLS failures, a server that hangs up.
            reason = str(exc) or type(exc).__name__
            return f"cannot talk to SMTP server {server}: {reason}; check mail.smtp_host/smtp_port"
        return None


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {message}"


def local_mailbox(username: str) -> str:
    """Where a user without an email address gets mail: their mailbox on this host (documented)."""
    return f"{username}@localhost"


def list_mails(
    session: Session,
    recipient: str | None = None,
    instance_id: str | None = None,
    limit: int = 100,
    *,
    recipients: Collection[str] | None = None,
) -> list[MailRow]:
    """The mails, newest first; only those to ``recipient``, to one of ``recipients``, of ``instance_id``."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")
    query = sa.select(MailRow).order_by(MailRow.created_at.desc(), MailRow.mail_id.desc()).limit(limit)
    if recipient is not None:
        query = query.where(MailRow.recipient == recipient)
    if recipients is not None:
        query = query.where(MailRow.recipient.in_(list(recipients)))
    if instance_id is not None:
        query = query.where(MailRow.instance_id == instance_id)
    return list(session.scalars(query))


# --- the mails the platform sends ---------------------------------------------------------------


def _app_label(app: str, version: str | None) -> str:
    return f"{app} {version}" if version else app


def instance_started_mail(
    app: str,
    version: str | None,
    location: str,
    instance_id: str,
    url: str,
    until: datetime | None,
    *,
    timezone: str | None = None,
) -> tuple[str, str]:
    """Subject and body telling a user their scheduled app runs: where, its address, when it stops.

    ``url`` "" when the instance's address is not known; ``until`` None when it has no scheduled end;
    it is told in the location's ``timezone`` (IANA name; None: UTC), with the zone and its offset.
    """
    label = _app_label(app, version)
    address = f"{OPEN_IT_HERE}\n{url}" if url else "`aiot instance list` shows its address."
    stop = (
        f"It will stop at {local_time(until, timezone)}."
        if until is not None
        else "It runs until it is stopped."
    )
    body = (
        f"Hello,\n\n"
        f"{label} is running at {location}.\n\n"
        f"{address}\n\n"
        f"{stop}\n\n"
        f"Instance {instance_id}; `aiot instance list` (or GET /api/instances) shows it.\n\n"
        f"-- the AIoT platform\n"
    )
    return f"{label} is running at {location}", body


def instance_moved_mail(
    app: str, version: str | None, location: str, instance_id: str, url: str
) -> tuple[str, str]:
    """Subject and body telling a user their running app moved to another node: its new address.

    The subject names the address, so each move is mailed once however often its event comes.
    """
    label = _app_label(app, version)
    address = f"{ITS_NEW_ADDRESS}\n{url}" if url else "`aiot instance list` shows its new address."
    body = (
        f"Hello,\n\n"
        f"{label} at {location} stopped answering where it ran, so the platform started it on "
        f"another node.\n\n"
        f"{address}\n\n"
        f"Instance {instance_id}; `aiot instance list` (or GET /api/instances) shows it.\n\n"
        f"-- the AIoT platform\n"
    )
    return f"{label} at {location} moved to {url or 'another node'}", body


def instance_failed_mail(
    app: str, version: str | None, location: str, instance_id: str, reason: str
) -> tuple[str, str]:
    """Subject and body telling a user their scheduled app failed, why, and what to do next."""
    label = _app_label(app, version)
    body = (
        f"Hello,\n\n"
        f"{label} failed at {location}.\n\n"
        f"Reason: {reason}\n\n"
        f"What to do next:\n"
        f"- see instance {instance_id} with `aiot instance list` (or GET /api/instances);\n"
        f"- once the cause is fixed, reschedule the app with `aiot schedule create`.\n\n"
        f"-- the AIoT platform\n"
    )
    return f"{label} failed at {location}", body
