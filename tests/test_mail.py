"""The platform's mail: the outbox in the registry database, and delivery to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from platform_core.db import Database
from platform_sdk.errors import BadRequest
from platform_sdk.net import free_port
from platform_sdk.settings import MailSettings
from scheduler.mail import (
    MAX_ATTEMPTS,
    STALE_AFTER,
    Mailer,
    MailView,
    instance_failed_mail,
    instance_moved_mail,
    instance_started_mail,
    list_mails,
)
from tests.fixtures.smtp import SmtpServer, SmtpServers

SENDER = "platform@aiot.example"
ADA = "ada@example.com"


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    """One migrated SQLite registry: SMTP behaviour does not depend on the backend."""
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    database.migrate()
    yield database
    database.stop()


def smtp_mailer(port: int, **settings: object) -> Mailer:
    return Mailer(
        MailSettings.model_validate(
            {"smtp_host": "127.0.0.1", "smtp_port": port, "sender": SENDER, "timeout_s": 5} | settings
        )
    )


def stored(
    database: Database, recipient: str | None = None, instance_id: str | None = None
) -> list[MailView]:
    with database.session() as session:
        return [MailView.model_validate(row) for row in list_mails(session, recipient, instance_id)]


# --- the outbox ---------------------------------------------------------------------------------


def test_without_smtp_mails_stay_in_the_outbox(database: Database) -> None:
    mailer = Mailer(MailSettings())

    mail = mailer.send(database, ADA, "Smart Home is running", "It is 21 °C at home.\n", "inst-1")

    assert (mail.status, mail.error, mail.sent_at) == ("outbox", None, None)
    [shown] = stored(database)
    assert shown == mail
    assert (shown.recipient, shown.subject, shown.body) == (
        ADA,
        "Smart Home is running",
        "It is 21 °C at home.\n",
    )
    assert shown.instance_id == "inst-1"
    assert mailer.deliver_pending(database) == 0
    assert stored(database)[0].status == "outbox"


def test_a_recorded_mail_exists_only_if_the_callers_transaction_commits(database: Database) -> None:
    mailer = Mailer(MailSettings())

    def save_instance_and_mail() -> None:
        with database.session() as session:
            mailer.record(session, ADA, "Smart Home is running", "body\n")
            raise RuntimeError("the instance could not be saved")

    with pytest.raises(RuntimeError):
        save_instance_and_mail()
    assert stored(database) == []

    with database.session() as session:
        mailer.record(session, ADA, "Smart Home is running", "body\n")
    assert [mail.status for mail in stored(database)] == ["outbox"]


def test_send_once_mails_an_instance_once(database: Database) -> None:
    mailer = Mailer(MailSettings())

    first = mailer.send_once(database, ADA, "Smart Home is running", "body\n", "inst-1")
    again = mailer.send_once(database, ADA, "Smart Home is running", "body\n", "inst-1")
    failed = mailer.send_once(database, ADA, "Smart Home failed", "body\n", "inst-1")

    assert again == first
    assert [mail.mail_id for mail in stored(database)] == [failed.mail_id, first.mail_id]


def test_list_mails_newest_first_and_filtered(database: Database) -> None:
    mailer = Mailer(MailSettings())
    for number, (recipient, instance_id) in enumerate(
        [(ADA, "inst-1"), ("bob@example.com", "inst-1"), (ADA, "inst-2")]
    ):
        mailer.send(database, recipient, f"mail {number}", "body\n", instance_id)

    assert [mail.subject for mail in stored(database)] == ["mail 2", "mail 1", "mail 0"]
    assert [mail.subject for mail in stored(database, recipient=ADA)] == ["mail 2", "mail 0"]
    assert [mail.subject for mail in stored(database, instance_id="inst-1")] == ["mail 1", "mail 0"]
    with database.session() as session:
        to_either = list_mails(session, recipients=[ADA, "bob@example.com"])
        assert [row.subject for row in to_either] == ["mail 2", "mail 1", "mail 0"]
        assert [row.subject for row in list_mails(session, recipients=["eve@example.com"])] == []
        assert [row.subject for row in list_mails(session, limit=1)] == ["mail 2"]
        with pytest.raises(BadRequest, match="limit must be between 1 and 1000"):
            list_mails(session, limit=0)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", "empty"),
        ("ada", "exactly one @"),
        ("ada@@example.com", "exactly one @"),
        ("ada smith@example.com", "whitespace"),
        ("ada@example.com\r\nBcc: eve@example.com", "whitespace"),
        (".ada@example.com", "not a valid mailbox name"),
        ("ada@-example.com", "not a valid domain name"),
        ("adà@example.com", "non-ASCII"),
    ],
)
def test_a_bad_recipient_is_refused_and_nothing_stored(
    sqlite_database: Database, address: str, reason: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        Mailer(MailSettings()).send(sqlite_database, address, "Smart Home is running", "body\n")

    assert repr(address) in refused.value.message
    assert reason in refused.value.message
    assert stored(sqlite_database) == []


# --- SMTP ---------------------------------------------------------------------------------------


@pytest.mark.service("smtp")
def test_smtp_delivers_the_mail_and_marks_it_sent(sqlite_database: Database, smtp_server: SmtpServer) -> None:
    until = datetime(2030, 5, 1, 14, 0, tzinfo=UTC)
    subject, body = instance_started_mail(
        "Smart Home", "1.2.0", "lake-home", "inst-7", "http://127.0.0.1:8080/apps/inst-7/", until
    )
    body += "It is 21 °C at home.\n"

    mail = smtp_mailer(smtp_server.port).send(sqlite_database, ADA, subject, body, "inst-7")

    assert (mail.status, mail.error) == ("sent", None)
    assert mail.sent_at is not None
    assert stored(sqlite_database)[0] == mail
    [received] = smtp_server.received
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [ADA])
    message = received.message
    assert (message["From"], message["To"], message["Subject"]) == (SENDER, ADA, subject)
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == body


@pytest.mark.service("smtp")
def test_a_recipient_the_server_refuses_leaves_the_mail_failed_with_its_reply(
    sqlite_database: Database, smtp_server: SmtpServer
) -> None:
    smtp_server.refuse[ADA] = f"550 5.1.1 <{ADA}>: no such mailbox"

    mail = smtp_mailer(smtp_server.port).send(sqlite_database, ADA, "Smart Home is running", "body\n")

    assert mail.status == "failed"
    assert mail.sent_at is None
    assert mail.error is not None
    assert f"refused {ADA}: 550 5.1.1 <{ADA}>: no such mailbox" in mail.error
    assert stored(sqlite_database)[0] == mail
    assert smtp_server.received == []


@pytest.mark.service("smtp")
def test_an_unreachable_server_fails_the_mail_until_deliver_pending_finds_it_up(
    sqlite_database: Database, smtp_servers: SmtpServers
) -> None:
    port = free_port()
    mailer = smtp_mailer(port)

    mail = mailer.send(sqlite_database, ADA, "Smart Home is running", "body\n")

    assert mail.status == "failed"
    assert mail.error is not None
    assert f"127.0.0.1:{port}" in mail.error
    assert "check mail.smtp_host/smtp_port" in mail.error

    server = smtp_servers.start(port)
    assert mailer.deliver_pending(sqlite_database) == 1
    [delivered] = stored(sqlite_database)
    assert (delivered.mail_id, delivered.status, delivered.error) == (mail.mail_id, "sent", None)
    assert [received.message["Subject"] for received in server.received] == ["Smart Home is running"]
    assert mailer.deliver_pending(sqlite_database) == 0


@pytest.mark.service("smtp")
def test_deliver_pending_gives_up_on_stale_and_repeatedly_failing_mails(
    sqlite_database: Database, smtp_servers: SmtpServers
) -> None:
    port = free_port()
    mailer = smtp_mailer(port)
    with sqlite_database.session() as session:
        old = mailer.record(session, ADA, "yesterday's news", "body\n")
        old.created_at = datetime.now(UTC) - STALE_AFTER - timedelta(minutes=1)
    failing = mailer.send(sqlite_database, ADA, "Smart Home is running", "body\n")
    for _ in range(MAX_ATTEMPTS):
        mailer.deliver_pending(sqlite_database)

    server = smtp_servers.start(port)
    assert mailer.deliver_pending(sqlite_database) == 0
    assert server.received == []
    assert {mail.subject: mail.status for mail in stored(sqlite_database)} == {
        "yesterday's news": "outbox",
        failing.subject: "failed",
    }
    # Asked explicitly, the mailer still tries.
    assert mailer.deliver(sqlite_database, failing.mail_id).status == "sent"


@pytest.mark.service("smtp")
def test_smtp_login(sqlite_database: Database, smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(login=("platform", "s3cret"))

    wrong = smtp_mailer(server.port, smtp_username="platform", smtp_password="guess")
    mail = wrong.send(sqlite_database, ADA, "Smart Home is running", "body\n")
    assert mail.status == "failed"
    assert mail.error is not None
    assert "refused the login: 535" in mail.error
    assert "check mail.smtp_username/smtp_password" in mail.error

    right = smtp_mailer(server.port, smtp_username="platform", smtp_password="s3cret")
    assert right.deliver(sqlite_database, mail.mail_id).status == "sent"
    assert len(server.received) == 1


# --- the texts ----------------------------------------------------------------------------------


def test_instance_started_mail_says_where_it_runs_its_address_and_when_it_stops() -> None:
    until = datetime(2030, 5, 1, 14, 0, tzinfo=UTC)
    subject, body = instance_started_mail(
        "Smart Classroom", "2.0.1", "school", "inst-9", "http://aiot.example/apps/inst-9/", until
    )

    assert subject == "Smart Classroom 2.0.1 is running at school"
    assert "Smart Classroom 2.0.1 is running at school." in body
    assert "\nhttp://aiot.example/apps/inst-9/\n" in body
    assert "It will stop at 2030-05-01 14:00 UTC." in body
    assert "inst-9" in body

    _, open_ended = instance_started_mail("Smart Classroom", None, "school", "inst-9", "", None)
    assert "It runs until it is stopped." in open_ended
    assert "`aiot instance list` shows its address." in open_ended


def test_instance_started_mail_tells_the_stop_in_the_locations_time_zone() -> None:
    until = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)

    _, berlin = instance_started_mail(
        "Smart Home", "1.2.0", "lake-home", "inst-3", "http://10.0.0.7:9012", until, timezone="Europe/Berlin"
    )
    _, new_york = instance_started_mail(
        "Smart Home", "1.2.0", "lake-home", "inst-3", "", until, timezone="America/New_York"
    )

    assert "It will stop at 2026-12-06 18:30 CET (UTC+01:00)." in berlin
    assert "It will stop at 2026-12-06 12:30 EST (UTC-05:00)." in new_york
    assert "UTC." not in berlin


def test_a_mail_view_gives_the_apps_address_the_mail_gives(database: Database) -> None:
    mailer = Mailer(MailSettings())
    until = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)
    texts = {
        "running": instance_started_mail(
            "Smart Home", "1.2.0", "lake-home", "inst-3", "http://10.0.0.7:9012", until
        ),
        "moved": instance_moved_mail("Smart Home", "1.2.0", "lake-home", "inst-3", "http://10.0.0.8:9020"),
        "no address yet": instance_started_mail("Smart Home", "1.2.0", "lake-home", "inst-3", "", until),
        # A reason with an address in it is not the app's address.
        "failed": instance_failed_mail(
            "Smart Home", "1.2.0", "lake-home", "inst-3", "http://10.0.0.7:9012/health did not answer"
        ),
    }
    sent = {
        kind: mailer.send(database, ADA, subject, body, "inst-3") for kind, (subject, body) in texts.items()
    }

    assert {kind: mail.url for kind, mail in sent.items()} == {
        "running": "http://10.0.0.7:9012",
        "moved": "http://10.0.0.8:9020",
        "no address yet": None,
        "failed": None,
    }
    shown = {mail.mail_id: mail.model_dump(mode="json")["url"] for mail in stored(database)}
    assert shown == {mail.mail_id: mail.url for mail in sent.values()}


def test_instance_failed_mail_says_why_and_what_to_do_next() -> None:
    subject, body = instance_failed_mail(
        "Smart Home", "1.2.0", "lake-home", "inst-3", "no node has 2 GB free"
    )

    assert subject == "Smart Home 1.2.0 failed at lake-home"
    assert "Reason: no node has 2 GB free" in body
    assert "`aiot instance list`" in body
    assert "/api/instances" in body
    assert "`aiot schedule create`" in body
    assert "inst-3" in body


def test_instance_moved_mail_gives_the_new_address_and_each_move_its_own_subject() -> None:
    subject, body = instance_moved_mail("Smart Home", "1.2.0", "lake-home", "inst-3", "http://10.0.0.7:9012")

    assert subject == "Smart Home 1.2.0 at lake-home moved to http://10.0.0.7:9012"
    assert "started it on another node" in body
    assert "\nhttp://10.0.0.7:9012\n" in body
    assert "inst-3" in body
    # send_once mails an instance once per subject: a repeated event once, a second move again.
    later, _ = instance_moved_mail("Smart Home", "1.2.0", "lake-home", "inst-3", "http://10.0.0.8:9020")
    assert later != subject
