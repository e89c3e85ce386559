"""The bootstrap over SSH: install a pinned release of the platform on hosts and start it there.

``Bootstrap(targets, ...).run()``, the main host first, then each other host::

    release    (here, once) a wheel built from this checkout, the wheels of its locked dependencies
               (uv.lock, for this Python; cached under ~/.cache/aiot/wheelhouse-*) and the uv binary:
               its id is the hash of them all
    connect    paramiko, with the host's key; a refused key or an unreachable host fails here; a
               user other than root runs every command and file transfer through passwordless
               sudo (an Azure VM's admin user), checked here
    python     the host's Python has this machine's minor version (the wheels are built for it)
    upload     the release into ROOT/releases/<id> over SFTP (skipped when already complete there)
    install    uv, offline, from those wheels only, into ROOT/venvs/<id>; ROOT/venv points at it
               (nothing is fetched from the host: an air-gapped host installs the same way)
    kafka      (main host, no external broker) the broker's jars into ROOT/kafka-jars/<digest>
    settings   ROOT/settings.toml (the host's address for the broker, front door and agent; the
               inventory's settings) and, on the main host, the roster pinned to it: written only
               when different
    start      ``python -m bootstrapper.host main|join`` (see there): a supervised process tree of
               its own session, recorded under ROOT/home/run, left running when SSH ends

Every step reports ``host: step: what happened`` (``unchanged`` when nothing had to be done), so a
second run says "unchanged" everywhere. A failing step raises ``RemoteError`` naming the host, the
step and the remote output. ``destroy_hosts`` runs ``python -m bootstrapper.host down`` on each
(the main host first, so nothing re-places what the others stop): it stops exactly what ``start``
started, and leaves the installed release for the next bootstrap.

Hosts reach each other on their ``address``: the main host's broker listens there (``kafka.host``),
its front door too (``web.host``), and every agent binds and announces it (``agent.host``), as do
the services it runs (``AIOT_SERVICE_HOST``). The registry (SQLite) lives on the main host, so the
roster's services are pinned there unless an external database is configured; several hosts need
a bucket they all reach (``blob.backend = "azure"``) for the bundles of models and apps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paramiko
from pydantic import BaseModel, Field

from bootstrapper.cluster import (
    MEMBER_FILE,
    ClusterMember,
    MemberAddress,
    cluster_identity,
    forget_cluster_identity,
    with_password,
)
from bootstrapper.kafka import ADMIN_USER, SCRAM_MECHANISM, fetch_jars, jars_dir, jars_ready
from bootstrapper.providers import Host, Progress
from platform_core.roster import load_roster
from platform_sdk.errors import PlatformError, Unavailable, ValidationFailed
from platform_sdk.principals import BusSecrets, bus_secrets_document
from platform_sdk.runstate import exclusive, private_dir
from platform_sdk.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RECORD_FILE = "bootstrap.json"
HOST_MODULE = "bootstrapper.host"
# The main host's hand-over of the spare hosts to its node manager: AIOT_HOME/spares/hosts.json.
SPARES_DIR = "spares"
SPARES_FILE = "hosts.json"
SPARE_JOIN_S = 600.0  # with spares, the least node_manager.scale_out_join_s: a host's whole bootstrap
RELEASES_KEPT = 3  # release folders kept in the cache (bootstraps at once may use different ones)
# The SFTP server of the usual distributions, run through sudo for a user other than root.
SFTP_SERVER = (
    "for server in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server "
    "/usr/lib/ssh/sftp-server /usr/libexec/sftp-server; do "
    '[ -x "$server" ] && exec "$server"; done; echo "no sftp-server on this host" >&2; exit 127'
)


class RemoteError(Unavailable):
    """A step failed on a host: the message names the host, the step and the remote output."""

    def __init__(self, host: str, step: str, detail: str) -> None:
        super().__init__(f"{host}: {step} failed: {detail}")
        self.host = host
        self.step = step


class Target(BaseModel):
    """One host to bootstrap: how it is reached, its Python, where the platform goes."""

    host: Host
    python: str = "python3"
    root: str = "/opt/aiot"
    main: bool = False


class NodeEntry(BaseModel):
    name: str
    address: str
    main: bool
    http_url: str


class SpareHost(BaseModel):
    """A spare host as the main host's node manager reaches it (its key is a copy on the main host)."""

    host: Host
    python: str
    root: str


class SpareHosts(BaseModel):
    """What the bootstrap hands the main host's node manager for scale-out over SSH."""

    release: str = Field(description="the release's folder on the main host, installed on each spare")
    python: str = Field(description="major.minor of the Python the release is for")
    settings: dict[str, Any] = Field(default_factory=dict, description="the inventory's settings")
    hosts: list[SpareHost]
    complete: bool = Field(
        default=True, description="false until the hosts the bootstrap starts have all joined"
    )


def spares_path(settings: Settings) -> Path:
    return settings.home_dir / SPARES_DIR / SPARES_FILE


def read_spares(settings: Settings) -> SpareHosts | None:
    """The spare hosts handed to this (main) host, or None."""
    try:
        return SpareHosts.model_validate_json(spares_path(settings).read_bytes())
    except FileNotFoundError:
        return None


class BootstrapRecord(BaseModel):
    """What `aiot bootstrap` made, in AIOT_HOME/run/bootstrap.json on the machine that ran it."""

    provider: str
    config: str = Field(description="the provider's config file (an inventory, an azure TOML)")
    web_url: str | None = None
    broker: str | None = None
    release: str = ""
    nodes: list[NodeEntry] = Field(default_factory=list)


def record_path(settings: Settings) -> Path:
    return settings.run_dir / RECORD_FILE


def read_record(settings: Settings) -> BootstrapRecord | None:
    try:
        return BootstrapRecord.model_validate_json(record_path(settings).read_bytes())
    except FileNotFoundError:
        return None


def clear_record(settings: Settings) -> None:
    """Forget the bootstrapped platform (``aiot destroy``): its record and its cluster's identity."""
    record_path(settings).unlink(missing_ok=True)
    forget_cluster_identity(settings)


def write_record(settings: Settings, record: BootstrapRecord) -> None:
    private_dir(settings.run_dir)
    record_path(settings).write_text(record.model_dump_json(indent=2))


# the release ----------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _uv() -> tuple[str, str]:
    """The uv that builds the release here, and its version (the hosts get the same one)."""
    found = shutil.which("uv")
    if found is None:
        raise Unavailable("uv is needed to build a release (pip install uv)")
    words = _run_here("release", [found, "--version"]).split()
    return found, words[1] if len(words) > 1 else ""


def _uv_binary(wheel: Path, target: Path) -> None:
    """The uv executable out of uv's wheel (a shim or wrapper on PATH here would not run there)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(item for item in archive.namelist() if item.endswith(".data/scripts/uv"))
        target.write_bytes(archive.read(name))
    target.chmod(0o755)


def _run_here(step: str, command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise RemoteError("this machine", step, "\n".join(output))
    return result.stdout


class Release(BaseModel):
    """The files a host installs from: the platform's wheel, its locked dependencies' wheels, uv."""

    directory: Path
    python: str = Field(description="major.minor of the Python the wheels are for")
    files: dict[str, str] = Field(description="relative path → sha256")

    @property
    def id(self) -> str:
        text = json.dumps(sorted(self.files.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def wheel(self) -> str:
        return next(name for name in self.files if name.startswith("wheels/aiot_platform-"))

    @classmethod
    def installed(cls, directory: Path, python: str) -> Release:
        """A release uploaded to this host earlier (the main host hands its own to spare hosts)."""
        try:
            files = json.loads((directory / ".complete").read_text())
        except (OSError, ValueError) as exc:
            raise ValidationFailed(
                f"release {directory} is not complete on this host ({exc}); run `aiot bootstrap` again"
            ) from exc
        return cls(directory=directory, python=python, files=files)

    @classmethod
    def build(cls, progress: Progress, cache: Path | None = None) -> Release:
        """Build (or reuse) the release of this checkout for this machine's Python.

        Bootstraps running at once (two platforms, or tests side by side) build one at a time
        (a lock in the cache) and each uses its own release folder, ``release-<id>``: one being
        uploaded is never rebuilt under it. The newest few are kept."""
        cache = cache or Path.home() / ".cache" / "aiot"
        cache.mkdir(parents=True, exist_ok=True)
        with exclusive(cache / ".release.lock"):
            return cls._build(progress, cache)

    @classmethod
    def _build(cls, progress: Progress, cache: Path) -> Release:
        if not (REPO / "uv.lock").is_file():
            raise ValidationFailed(
                f"aiot bootstrap installs the platform from a checkout; {REPO} has no uv.lock"
            )
        uv, uv_version = _uv()
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        lock = hashlib.sha256((REPO / "uv.lock").read_bytes()).hexdigest()[:16]
        wheelhouse = cache / f"wheelhouse-{lock}-py{python}-uv{uv_version}"
        if not (wheelhouse / ".complete").is_file():
            progress(f"release: fetching the locked dependencies' wheels for Python {python} (once)")
            staging = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=cache if cache.exists() else None))
            try:
                requirements = staging / "requirements.txt"
                _run_here(
                    "release",
                    [uv, "export", "--frozen", "--no-dev", "--extra", "embedded", "--no-emit-project",
                     "--no-hashes", "--no-header", "-q", "-o", str(requirements)],
                    cwd=REPO,
                )  # fmt: skip
                _run_here(
                    "release",
                    [uv, "run", "-q", "--no-project", "--python", sys.executable, "--with", "pip",
                     "python", "-m", "pip", "download", "-q", "--only-binary=:all:",
                     "-r", str(requirements), "-d", str(staging / "wheels")],
                )  # fmt: skip
                _run_here(
                    "release",
                    [uv, "run", "-q", "--no-project", "--python", sys.executable, "--with", "pip",
                     "python", "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps",
                     f"uv=={uv_version}", "-d", str(staging / "tools")],
                )  # fmt: skip
                (staging / ".complete").write_text(lock + "\n")
                cache.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(wheelhouse, ignore_errors=True)
                staging.rename(wheelhouse)
                for older in cache.glob("wheelhouse-*"):  # another lock's or Python's: bounded cache
                    if older != wheelhouse:
                        shutil.rmtree(older, ignore_errors=True)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".release-", dir=cache))
        try:
            (staging / "wheels").mkdir()
            progress("release: building the platform's wheel from this checkout")
            wheels = str(staging / "wheels")
            _run_here("release", [uv, "build", "--wheel", "-q", "--out-dir", wheels], cwd=REPO)
            for wheel in (wheelhouse / "wheels").iterdir():
                (staging / "wheels" / wheel.name).hardlink_to(wheel)
            shutil.copy2(wheelhouse / "requirements.txt", staging / "requirements.txt")
            _uv_binary(next((wheelhouse / "tools").glob("uv-*.whl")), staging / "uv")
            files = {
                str(path.relative_to(staging)): _sha256(path)
                for path in sorted(staging.rglob("*"))
                if path.is_file()
            }
            release = cls(directory=staging, python=python, files=files)
            directory = cache / f"release-{release.id}"
            if not directory.exists():
                staging.rename(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(cache / "release", ignore_errors=True)  # the one folder of earlier versions
        for older in sorted(cache.glob("release-*"), key=lambda path: path.stat().st_mtime)[:-RELEASES_KEPT]:
            if older != directory:
                shutil.rmtree(older, ignore_errors=True)
        directory.touch()  # the newest, for the bound above
        return release.model_copy(update={"directory": directory})


# SSH ----------------------------------------------------------------------------------------------
class Session:
    """One SSH connection to a host: commands (output streamed line by line) and files (SFTP)."""

    def __init__(self, host: Host, settings: Settings, known_hosts: Path) -> None:
        self.name = host.name
        self.settings = settings.bootstrap
        self._client = paramiko.SSHClient()
        private_dir(known_hosts.parent)
        known_hosts.touch(mode=0o600)
        self._client.load_host_keys(str(known_hosts))
        # First contact trusts the host's key and remembers it (known_hosts of this home); a changed
        # key afterwards is refused.
        self._client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        address = host.ssh
        where = f"{address.user}@{address.host}:{address.port}"
        try:
            self._client.connect(
                address.host,
                port=address.port,
                username=address.user,
                key_filename=str(address.key_file),
                timeout=self.settings.connect_timeout_s,
                banner_timeout=self.settings.connect_timeout_s,
                auth_timeout=self.settings.connect_timeout_s,
                allow_agent=False,
                look_for_keys=False,
            )
        except paramiko.AuthenticationException as exc:
            self._client.close()
            raise RemoteError(
                self.name, "connect", f"{where} refused the key {address.key_file} ({exc})"
            ) from exc
        except paramiko.BadHostKeyException as exc:
            self._client.close()
            raise RemoteError(self.name, "connect", f"{where} changed its host key ({exc})") from exc
        except (OSError, paramiko.SSHException) as exc:
            self._client.close()
            raise RemoteError(self.name, "connect", f"{where} is unreachable: {exc}") from exc
        self._client.save_host_keys(str(known_hosts))
        # A user other than root (an Azure VM's admin user) works through passwordless sudo: the
        # platform installs system-wide and its agent starts sandboxes under other uids.
        self.sudo = address.user != "root"
        if self.sudo:
            code, output = self.run("connect", "true", check=False)
            if code != 0:
                self._client.close()
                raise RemoteError(
                    self.name,
                    "connect",
                    f"{where}: {address.user} cannot use sudo without a password ({output.strip()}); "
                    "the platform installs as root: log in as root, or give the user passwordless "
                    "sudo (a file in /etc/sudoers.d with NOPASSWD: ALL)",
                )

    def close(self) -> None:
        self._client.close()

    def _sftp(self) -> paramiko.SFTPClient:
        """An SFTP session; through sudo, its server runs as root (files land owned by root)."""
        if not self.sudo:
            return self._client.open_sftp()
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(self.name, "upload", "the SSH connection was lost")
        channel = transport.open_session()
        channel.exec_command(f"sudo -n sh -c {shlex.quote(SFTP_SERVER)}")
        return paramiko.SFTPClient(channel)

    def run(
        self, step: str, command: str, progress: Progress | None = None, *, check: bool = True
    ) -> tuple[int, str]:
        """Run ``command`` (sh), streaming ``progress: ...`` lines; the exit code and the whole output."""
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(self.name, step, "the SSH connection was lost")
        channel = transport.open_session()
        channel.set_combine_stderr(True)
        channel.settimeout(self.settings.command_timeout_s)
        lines: list[str] = []
        try:
            channel.exec_command(f"sudo -n sh -c {shlex.quote(command)}" if self.sudo else command)
            with channel.makefile("r") as output:
                for raw in output:
                    line = (
                        raw.rstrip("\n")
                        if isinstance(raw, str)
                        else raw.decode(errors="replace").rstrip("\n")
                    )
                    lines.append(line)
                    if progress is not None and line.startswith("progress: "):
                        progress(f"{self.name}: {step}: {line.removeprefix('progress: ')}")
            code = channel.recv_exit_status()
        except TimeoutError as exc:
            raise RemoteError(
                self.name, step, f"no end within {self.settings.command_timeout_s:.0f}s"
            ) from exc
        finally:
            channel.close()
        text = "\n".join(lines)
        if check and code != 0:
            tail = "\n".join(lines[-20:]) or "(no output)"
            raise RemoteError(self.name, step, f"exit {code}:\n{tail}")
        return code, text

    def read_text(self, path: str) -> str | None:
        with self._sftp() as sftp:
            try:
                with sftp.open(path, "r") as handle:
                    return bytes(handle.read()).decode()
            except FileNotFoundError:
                return None

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        with self._sftp() as sftp:
            temporary = f"{path}.tmp"
            with sftp.open(temporary, "w") as handle:
                handle.chmod(mode)
                handle.write(text.encode())
            sftp.posix_rename(temporary, path)

    def put_tree(self, local: Path, files: Sequence[str], remote: str) -> None:
        with self._sftp() as sftp:
            made: set[str] = set()
            for name in files:
                parent = str(Path(remote, name).parent)
                if parent not in made:
                    self.run("upload", f"mkdir -p {shlex.quote(parent)}")
                    made.add(parent)
                sftp.put(str(local / name), f"{remote}/{name}")
                sftp.chmod(f"{remote}/{name}", (local / name).stat().st_mode & 0o755)


# settings files ------------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(key)} = {_toml_value(item)}" for key, item in value.items()) + "}"
        )
    raise ValidationFailed(f"cannot write {value!r} to a settings file")


def to_toml(tree: dict[str, Any]) -> str:
    """A settings tree as TOML: scalars first, then a table per nested dict (two levels)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in tree.items() if not isinstance(value, dict)]
    for key, value in tree.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{name} = {_toml_value(item)}" for name, item in value.items()]
    return "\n".join(lines) + "\n"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def pinned_roster(settings: Settings) -> str:
    """The roster with every service on the main node (its registry and bucket are there)."""
    blocks = []
    for spec in load_roster(settings):
        data = spec.model_dump(mode="json", exclude_defaults=True)
        data["main_node_only"] = True
        blocks.append(
            "[[service]]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in data.items())
        )
    return "# Written by aiot bootstrap: the roster, pinned to the main host.\n\n" + "\n".join(blocks)


# the bootstrap -------------------------------------------------------------------------------------
class Bootstrap:
    """Install and start the platform on ``targets`` (exactly one main), or stop it there."""

    def __init__(
        self,
        settings: Settings,
        progress: Progress,
        *,
        host_settings: dict[str, Any] | None = None,
        known_hosts: Path | None = None,
    ) -> None:
        self.settings = settings
        self.progress = progress
        self.host_settings = host_settings or {}
        self.known_hosts = known_hosts or settings.home_dir / "ssh" / "known_hosts"
        self.generated_password: str | None = None
        self.cluster: list[MemberAddress] = []  # the Kafka cluster's members, when it has one

    @contextlib.contextmanager
    def session(self, target: Target) -> Iterator[Session]:
        ssh = target.host.ssh
        self.progress(f"{target.host.name}: connect: {ssh.user}@{ssh.host}:{ssh.port}")
        session = Session(target.host, self.settings, self.known_hosts)
        try:
            yield session
        finally:
            session.close()

    def _step(self, target: Target, step: str, what: str) -> None:
        self.progress(f"{target.host.name}: {step}: {what}")

    def run(
        self,
        targets: Sequence[Target],
        provider: str,
        config: str,
        spares: Sequence[Target] = (),
        brokers: Sequence[str] = (),
    ) -> BootstrapRecord:
        """Bootstrap every target; the record is written host by host (a half-made platform can
        be destroyed), but a failed run leaves the record of an earlier one as it was. ``spares``
        are not started: the main host's node manager gets them for scale-out (``bootstrapper.spares``).
        ``brokers``: the hosts of a Kafka cluster, one member each (``bootstrapper.cluster``)."""
        previous = read_record(self.settings)
        try:
            return self._run(targets, provider, config, spares, brokers)
        except BaseException:
            if previous is not None:
                write_record(self.settings, previous)
            raise

    def _run(
        self,
        targets: Sequence[Target],
        provider: str,
        config: str,
        spares: Sequence[Target],
        brokers: Sequence[str],
    ) -> BootstrapRecord:
        mains = [target for target in targets if target.main]
        if len(mains) != 1:
            raise ValidationFailed(f"a platform needs exactly one main host, not {len(mains)}")
        main = mains[0]
        others = [target for target in targets if not target.main]
        self._check_shared([*others, *spares])
        by_name = {target.host.name: target for target in targets}
        members = [by_name[name] for name in brokers]
        release = Release.build(self.progress)
        self.progress(f"release {release.id}: {len(release.files)} files (Python {release.python})")
        record = BootstrapRecord(provider=provider, config=config, release=release.id)
        if members:
            self._start_cluster(members, release, spares)
        with self.session(main) as session:
            self._install(session, main, release)
            settings = to_toml(self._settings_of(main, spares))
            self._write(session, main, "settings", f"{main.root}/settings.toml", settings)
            self._write(session, main, "settings", f"{main.root}/roster.toml", pinned_roster(self.settings))
            if self.cluster:
                self._cluster_secrets(session, main)
            self._hand_over_spares(session, main, release, spares, joined=False)
            result = self._start(
                session, main, f"main --remote-nodes {','.join(t.host.name for t in others)}"
            )
        record.web_url, record.broker = result["web_url"], result["broker"]
        record.nodes.append(
            NodeEntry(name=main.host.name, address=main.host.address, main=True, http_url=result["http_url"])
        )
        self.generated_password = result.get("generated_password")
        write_record(self.settings, record)
        for target in others:
            secrets = result["secrets"].get(target.host.name)
            record.nodes.append(self.join(target, release, result["broker"], result["web_url"], secrets))
            write_record(self.settings, record)
        with self.session(main) as session:
            self._hand_over_spares(session, main, release, spares, joined=True)
        return record

    def _start_cluster(self, members: Sequence[Target], release: Release, spares: Sequence[Target]) -> None:
        """Each member host: the release, its settings, the broker's jars, its member file, and its
        broker started (the last one waits until the cluster answers: a majority runs by then)."""
        identity = cluster_identity(self.settings)
        ports = self.settings.bootstrap
        self.cluster = [
            MemberAddress(
                node_id=index,
                host=target.host.address,
                port=ports.kafka_port,
                controller_port=ports.kafka_controller_port,
            )
            for index, target in enumerate(members, start=1)
        ]
        # Every host's topics (and the spares') get three replicas, two in sync.
        self.host_settings = _merge(
            self.host_settings,
            {"kafka": {"replication_factor": 3, "min_insync_replicas": 2}},
        )
        for index, target in enumerate(members, start=1):
            member = ClusterMember(
                node_id=index,
                cluster_id=identity.cluster_id,
                admin_password=identity.admin_password,
                voters=self.cluster,
            )
            with self.session(target) as session:
                self._install(session, target, release)
                settings = to_toml(self._settings_of(target, spares if target.main else ()))
                self._write(session, target, "settings", f"{target.root}/settings.toml", settings)
                secrets = f"{target.root}/home/secrets"
                home = shlex.quote(f"{target.root}/home")
                session.run("kafka", f"mkdir -p -m 700 {home} {shlex.quote(secrets)}")
                member_file = f"{secrets}/{MEMBER_FILE}"
                self._write(session, target, "kafka", member_file, with_password(member), mode=0o600)
                wait = " --wait" if index == len(members) else ""
                _code, output = session.run("kafka", self._python(target, f"broker{wait}"), self.progress)
                started = (_result(output) or {}).get("changed")
                said = "member started" if started else "member unchanged (already running)"
                self._step(target, "kafka", said)

    def _cluster_secrets(self, session: Session, main: Target) -> None:
        """The main host's secrets file for the cluster: its super user, from which the platform's
        principals are made. Written once: the platform adds its principals to it."""
        path = f"{main.root}/home/secrets/kafka.json"
        servers = self._servers()
        found = session.read_text(path)
        if found is not None and json.loads(found).get("bootstrap") == servers:
            self._step(main, "kafka", "kafka.json kept (the platform's principals are in it)")
            return
        identity = cluster_identity(self.settings)
        secrets = BusSecrets(
            bootstrap=servers,
            admin=ADMIN_USER,
            mechanism=SCRAM_MECHANISM,
            principals={ADMIN_USER: identity.admin_password},
        )
        session.run("kafka", f"mkdir -p -m 700 {shlex.quote(main.root)}/home/secrets")
        text = json.dumps(bus_secrets_document(secrets), indent=2)
        self._write(session, main, "kafka", path, text, mode=0o600)

    def _servers(self) -> str:
        return ",".join(f"{member.host}:{member.port}" for member in self.cluster)

    def join(
        self, target: Target, release: Release, broker: str, web_url: str, secrets: dict[str, Any] | None
    ) -> NodeEntry:
        """Install ``release`` on another host and start its agent, joined to ``broker``; ``secrets``
        is its bus credential (none on a bus without SASL)."""
        with self.session(target) as session:
            self._install(session, target, release)
            settings = to_toml(self._settings_of(target))
            self._write(session, target, "settings", f"{target.root}/settings.toml", settings)
            if secrets is not None:
                session.run("settings", f"mkdir -p -m 700 {shlex.quote(target.root)}/home/secrets")
                self._write(
                    session, target, "settings", f"{target.root}/home/secrets/kafka.json",
                    json.dumps(secrets, indent=2), mode=0o600,
                )  # fmt: skip
            joined = self._start(
                session, target, f"join --broker {shlex.quote(broker)} --web-url {shlex.quote(web_url)}"
            )
        return NodeEntry(
            name=target.host.name, address=target.host.address, main=False, http_url=joined["http_url"]
        )

    def _hand_over_spares(
        self, session: Session, main: Target, release: Release, spares: Sequence[Target], *, joined: bool
    ) -> None:
        """The main host's node manager gets the spare hosts (``bootstrapper.spares``): how to reach
        each (its key copied there, 0600), the release installed there to hand them, and the
        settings they get. An SSH platform gets the list even without spares: its node manager then
        adds no node (it would otherwise start more agents on the main host, as ``aiot up`` does).
        Before the main host starts (``joined`` false) the keys and, the first time, an incomplete
        list: its node manager adds nobody while the hosts this bootstrap starts are still joining;
        once they all have, the list."""
        folder = f"{main.root}/home/{SPARES_DIR}"
        listing = f"{folder}/{SPARES_FILE}"
        hosts = []
        for spare in spares:
            key = f"{folder}/keys/{spare.host.name}"
            hosts.append(
                SpareHost(
                    host=spare.host.model_copy(
                        update={"ssh": spare.host.ssh.model_copy(update={"key_file": Path(key)})}
                    ),
                    python=spare.python,
                    root=spare.root,
                )
            )
        handed = SpareHosts(
            release=f"{main.root}/releases/{release.id}",
            python=release.python,
            settings=self.host_settings,
            hosts=hosts,
        )
        if joined:
            self._write(session, main, "spares", listing, handed.model_dump_json(indent=2), mode=0o600)
            return
        session.run("spares", f"mkdir -p -m 700 {shlex.quote(main.root)}/home {shlex.quote(folder)}/keys")
        for spare, entry in zip(spares, hosts, strict=True):
            key_text = spare.host.ssh.key_file.read_text()
            self._write(session, main, "spares", str(entry.host.ssh.key_file), key_text, mode=0o600)
        if session.read_text(listing) is None:
            pending = handed.model_copy(update={"hosts": [], "complete": False})
            self._write(session, main, "spares", listing, pending.model_dump_json(indent=2), mode=0o600)

    def _check_shared(self, others: Sequence[Target]) -> None:
        blob = self.host_settings.get("blob", {})
        if others and blob.get("backend", "local") == "local":
            raise ValidationFailed(
                "several hosts need a bucket they all reach for the bundles of models and apps: set "
                'blob.backend = "azure" (and azure_connection_string) in the inventory\'s settings'
            )

    def _settings_of(self, target: Target, spares: Sequence[Target] = ()) -> dict[str, Any]:
        address = target.host.address
        tree: dict[str, Any] = {
            "home": f"{target.root}/home",
            "agent": {"node_id": target.host.name, "host": address},
            "web": {"host": address},
        }
        if target.main or self._member(target):
            tree["kafka"] = {"host": address, "jars_dir": f"{target.root}/kafka-jars"}
        if target.main and self.cluster:
            tree["kafka"]["bootstrap_servers"] = self._servers()
        if target.main:
            tree["node_manager"] = {"roster_file": f"{target.root}/roster.toml"}
            if spares:  # a spare's bootstrap (upload, install) takes longer than starting a local agent
                join_s = max(self.settings.node_manager.scale_out_join_s, SPARE_JOIN_S)
                tree["node_manager"]["scale_out_join_s"] = join_s
        return _merge(tree, self.host_settings)

    def _install(self, session: Session, target: Target, release: Release) -> None:
        root = shlex.quote(target.root)
        _code, version = session.run(
            "python", f"{shlex.quote(target.python)} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'"
        )
        found = version.strip().splitlines()[-1] if version.strip() else "?"
        if found != release.python:
            raise RemoteError(
                target.host.name,
                "python",
                f"{target.python} is Python {found}; the release is built for {release.python}",
            )
        self._step(target, "python", f"{target.python} is Python {found}")
        releases = f"{target.root}/releases/{release.id}"
        if session.read_text(f"{releases}/.complete") is not None:
            self._step(target, "upload", f"release {release.id} unchanged")
        else:
            self._step(target, "upload", f"release {release.id} ({len(release.files)} files)")
            staging = f"{target.root}/releases/.{release.id}.tmp"
            session.run(
                "upload",
                f"umask 022 && mkdir -p {root} && chmod 755 {root} && "
                f"rm -rf {shlex.quote(staging)} && mkdir -p {shlex.quote(staging)}",
            )
            session.put_tree(release.directory, sorted(release.files), staging)
            session.write_text(f"{staging}/.complete", json.dumps(release.files, indent=1))
            session.run("upload", f"mv {shlex.quote(staging)} {shlex.quote(releases)}")
        venv = f"{target.root}/venvs/{release.id}"
        if session.read_text(f"{venv}/.installed") is not None:
            self._step(target, "install", f"release {release.id} unchanged")
        else:
            self._step(target, "install", f"release {release.id} (offline, from its wheels)")
            uv = shlex.quote(f"{releases}/uv")
            session.run(
                "install",
                f"umask 022 && export UV_CACHE_DIR={root}/uv-cache UV_NO_PROGRESS=1 && "
                f"rm -rf {shlex.quote(venv)} && "
                f"{uv} venv -q --python {shlex.quote(target.python)} {shlex.quote(venv)} && "
                f"{uv} pip install -q --offline --no-index --find-links {shlex.quote(releases)}/wheels "
                f"--python {shlex.quote(venv)}/bin/python -r {shlex.quote(releases)}/requirements.txt "
                f"{shlex.quote(releases + '/' + release.wheel)} && "
                # The agent builds models' and apps' venvs with it (sudo's PATH may have no uv).
                f"cp {uv} {shlex.quote(venv)}/bin/uv && "
                f"touch {shlex.quote(venv)}/.installed",
            )
        session.run(
            "install", f"ln -sfn venvs/{release.id} {root}/venv.tmp && mv -T {root}/venv.tmp {root}/venv"
        )
        # Bounded: this release and the one before (a running platform may still use it) stay.
        session.run(
            "install",
            f"for folder in {root}/venvs {root}/releases; do "
            f'ls -1t "$folder" | grep -v "^{release.id}$" | tail -n +2 | '
            f'while read -r old; do rm -rf "$folder/$old"; done; done',
        )
        external = self.host_settings.get("kafka", {}).get("bootstrap_servers")
        if self._member(target) or (target.main and not self.cluster and not external):
            self._jars(session, target)

    def _member(self, target: Target) -> bool:
        """Whether ``target`` runs a member of the bootstrap's Kafka cluster."""
        return any(member.host == target.host.address for member in self.cluster)

    def _jars(self, session: Session, target: Target) -> None:
        kafka = self.settings.kafka
        if not jars_ready(kafka):
            fetch_jars(kafka, self.progress)
        local = jars_dir(kafka)
        names = sorted(path.name for path in local.iterdir() if path.is_file())
        manifest = json.dumps(names)
        remote = f"{target.root}/kafka-jars"
        if session.read_text(f"{remote}/.aiot-manifest") == manifest:
            self._step(target, "kafka", "the broker's jars unchanged")
            return
        self._step(target, "kafka", f"the broker's jars ({len(names)} files)")
        session.run("kafka", f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(remote)}")
        session.put_tree(local, names, remote)
        session.write_text(f"{remote}/.aiot-manifest", manifest)

    def _write(
        self, session: Session, target: Target, step: str, path: str, text: str, mode: int = 0o644
    ) -> None:
        name = Path(path).name
        if session.read_text(path) == text:
            self._step(target, step, f"{name} unchanged")
            return
        session.write_text(path, text, mode)
        self._step(target, step, f"{name} written")

    def _python(self, target: Target, arguments: str) -> str:
        root = shlex.quote(target.root)
        return (
            f"cd {root} && AIOT_HOME={root}/home AIOT_CONFIG_FILE={root}/settings.toml "
            f"{root}/venv/bin/python -m {HOST_MODULE} {arguments}"
        )

    def _start(self, session: Session, target: Target, arguments: str) -> dict[str, Any]:
        _code, output = session.run("start", self._python(target, arguments), self.progress)
        result = _result(output)
        if result is None:
            raise RemoteError(target.host.name, "start", f"no result:\n{output[-2000:]}")
        self._step(target, "start", "started" if result["changed"] else "unchanged (already running)")
        self._unit(session, target, arguments)
        return result

    def _unit(self, session: Session, target: Target, arguments: str) -> None:
        """Where systemd runs, a unit that starts this host's platform at boot and stops it at
        shutdown (enabled; this run has started it already)."""
        code, _ = session.run("systemd", "test -d /run/systemd/system", check=False)
        if code != 0:
            self._step(
                target, "systemd", "not running on this host: `aiot bootstrap` starts it again after a reboot"
            )
            return
        name = unit_name(target.root)
        text = systemd_unit(target, arguments, member=self._member(target))
        self._write(session, target, "systemd", f"/etc/systemd/system/{name}", text)
        session.run("systemd", f"systemctl daemon-reload && systemctl enable --quiet {name}")

    def destroy_hosts(self, targets: Sequence[Target]) -> list[str]:
        """Stop what bootstrap started on each target, the main host first; what was stopped. A host
        that fails does not keep the others running: the error names every one that failed."""
        stopped: list[str] = []
        failed: list[RemoteError] = []
        for target in sorted(targets, key=lambda target: not target.main):
            try:
                stopped += self._destroy(target)
            except RemoteError as exc:
                self.progress(f"error: {exc}")
                failed.append(exc)
        if failed:
            first = failed[0]
            others = "".join(f"; {exc}" for exc in failed[1:])
            raise RemoteError(first.host, first.step, str(first).split(" failed: ", 1)[1] + others)
        return stopped

    def _destroy(self, target: Target) -> list[str]:
        with self.session(target) as session:
            code, _ = session.run("stop", f"test -x {shlex.quote(target.root)}/venv/bin/python", check=False)
            if code != 0:
                self._step(target, "stop", "nothing installed")
                return []
            name = shlex.quote(unit_name(target.root))
            session.run(
                "stop",
                f"if [ -d /run/systemd/system ] && [ -f /etc/systemd/system/{name} ]; then "
                f"systemctl disable --quiet {name}; rm -f /etc/systemd/system/{name}; "
                "systemctl daemon-reload; fi",
            )
            _code, output = session.run("stop", self._python(target, "down --purge"), self.progress)
            names = (_result(output) or {}).get("stopped", [])
            self._step(target, "stop", f"stopped {', '.join(names)}" if names else "nothing was running")
            return [f"{target.host.name}/{name}" for name in names]


def unit_name(root: str) -> str:
    """The systemd unit of the platform installed at ``root`` (several roots, several units)."""
    return f"aiot-{hashlib.sha256(root.encode()).hexdigest()[:8]}.service"


def systemd_unit(target: Target, arguments: str, *, member: bool) -> str:
    """A oneshot unit around ``python -m bootstrapper.host``: it starts the host's supervised tree
    (its Kafka member first) and returns; the tree's processes stay in the unit's control group,
    and ``down`` stops them at shutdown (the member's log dir kept: it rejoins at the next boot)."""
    root = target.root
    python = f"{root}/venv/bin/python -m {HOST_MODULE}"
    starts = ([f"ExecStart={python} broker --wait"] if member else []) + [f"ExecStart={python} {arguments}"]
    lines = [
        "[Unit]",
        f"Description=AIoT platform on {target.host.name} ({'main host' if target.main else 'node'})",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        f"WorkingDirectory={root}",
        f"Environment=AIOT_HOME={root}/home AIOT_CONFIG_FILE={root}/settings.toml",
        *starts,
        f"ExecStop={python} down",
        "TimeoutStartSec=900",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _result(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith("result: "):
            found: dict[str, Any] = json.loads(line.removeprefix("result: "))
            return found
    return None


__all__ = [
    "Bootstrap",
    "BootstrapRecord",
    "PlatformError",
    "Release",
    "RemoteError",
    "SpareHosts",
    "Target",
]
