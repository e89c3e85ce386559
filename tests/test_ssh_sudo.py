"""The SSH bootstrap's session as a user other than root (an Azure VM's admin user): through sudo.

One sshd on 127.0.0.1 with two users of this machine made for the module: one with passwordless
sudo (commands and SFTP run as root: files land owned by root where only root may write), one
without (refused at connect with what to do). Both users and their sudoers file go at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootstrapper.providers import Host, SshAddress
from bootstrapper.remote import RemoteError, Session
from platform_sdk.settings import Settings
from tests.conftest import missing_component
from tests.fixtures.sudo_user import admin_user, need_sudo
from tests.platform_driver import wait_until

pytestmark = pytest.mark.service("sshd")
SSHD = "/usr/sbin/sshd"
SUDOER, PLAIN = "aiot-test-sudoer", "aiot-test-plain"


@dataclass
class Lab:
    port: int
    key: Path
    work: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if not Path(SSHD).exists():
        missing_component("sshd", f"{SSHD} is missing (apt-get install -y openssh-server)")
    need_sudo()
    # sshd reads authorized_keys as the user logging in: a folder others can enter (pytest's is not).
    work = Path(tempfile.mkdtemp(prefix="aiot-sudo-"))
    work.chmod(0o755)
    key = work / "user"  # the private key stays root's (0600)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host")], check=True)
    authorized = work / "authorized_keys"
    shutil.copy(work / "user.pub", authorized)
    authorized.chmod(0o644)
    users = contextlib.ExitStack()
    users.enter_context(admin_user(SUDOER))
    users.enter_context(admin_user(PLAIN, sudo=False))
    port = _free_port()
    Path("/run/sshd").mkdir(exist_ok=True)
    with open(work / "sshd.log", "ab") as log:
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-p", str(port), "-o", "ListenAddress=127.0.0.1", "-h", str(work / "host"),
             "-o", f"AuthorizedKeysFile={authorized}", "-o", "StrictModes=no", "-o", "UsePAM=no",
             "-o", f"PidFile={work / 'sshd.pid'}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip

    def answers() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    try:
        wait_until(answers, 20, "sshd answering")
        yield Lab(port, key, work)
    finally:
        sshd.terminate()
        sshd.wait(10)
        users.close()
        shutil.rmtree(work, ignore_errors=True)


def _session(lab: Lab, user: str, settings: Settings) -> Session:
    host = Host(
        name="vm-1",
        ssh=SshAddress(host="127.0.0.1", port=lab.port, user=user, key_file=lab.key),
        address="127.0.0.1",
        provider="azure",
    )
    return Session(host, settings, lab.work / "control" / f"known_hosts-{user}")  # its folder: 0700


def test_an_admin_user_with_sudo_runs_commands_and_writes_files_as_root(lab: Lab, settings: Settings) -> None:
    session = _session(lab, SUDOER, settings)
    try:
        assert session.sudo
        assert session.run("check", "id -un")[1].strip() == "root"
        only_root = lab.work / "only-root"
        only_root.mkdir(mode=0o700)
        target = only_root / "settings.toml"
        session.write_text(str(target), 'home = "/opt/aiot/home"\n', mode=0o600)
        assert target.read_text() == 'home = "/opt/aiot/home"\n'
        assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (0, 0o600)
        assert session.read_text(str(target)) == 'home = "/opt/aiot/home"\n'
        assert session.read_text(str(only_root / "absent")) is None
    finally:
        session.close()


def test_a_user_without_passwordless_sudo_is_refused_with_what_to_do(lab: Lab, settings: Settings) -> None:
    with pytest.raises(RemoteError) as raised:
        _session(lab, PLAIN, settings)
    message = str(raised.value)
    assert "vm-1" in message, message
    assert "connect" in message, message
    assert f"{PLAIN} cannot use sudo without a password" in message, message
    assert "NOPASSWD" in message, message
