"""Sandboxes of uploaded code: what a model replica or an app instance may see and do on its node.

Every service of kind ``model`` or ``app`` (``SANDBOXED_KINDS``) runs, when its agent runs as root
and ``sandbox.enabled`` holds:

* as an **unprivileged uid of its owner** (``ServiceSpec.owner``, the user who uploaded it): one uid
  (and a gid of the same number) per owner, chosen from ``sandbox.uid_base`` onwards by a hash of
  the owner's name and kept in ``AIOT_HOME/sandbox/uids.json`` (``UidTable``), so an owner keeps
  their uid across restarts and the agents of one home agree. No ``/etc/passwd`` entry is needed;
* with **no capabilities and no new privileges** (``setpriv`` on the process runtime,
  ``--cap-drop ALL`` and ``no-new-privileges`` on docker: ``service_agent.runtime``,
  ``service_agent.docker_runtime``);
* seeing **its bundle read-only**: a copy per owner and bundle under ``sandbox.root`` (outside
  ``AIOT_HOME``, which stays 0700), owned by root with the owner's gid, folders 0750 and files
  0640, so its owner's services read it and nobody else's do, and no sandbox writes it;
* with **a scratch folder of its own**, ``<root>/<node>/scratch/<service>`` (its uid, 0700):
  ``HOME`` and ``TMPDIR``; it lives while the service is placed here (restarts keep it);
* with **an environment built from scratch** (``sandbox_environment``), never the agent's.

``Sandboxes.check`` decides at the agent's start whether it can sandbox: as root with
``sandbox.enabled`` it needs ``setpriv``, a root folder nobody else controls and (process
runtime) an interpreter, the platform's code and its site-packages that others may read but not
write. Where it cannot, models and apps are refused (``Unavailable``, saying why) unless
``sandbox.allow_unsandboxed`` holds: then they run as the agent's user, with the same
environment and scratch folder, and the agent says so loudly at its start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platform_core.nodes import PROCESS_ENVIRONMENT, ServiceSpec
from platform_sdk.errors import Unavailable
from platform_sdk.runstate import exclusive
from platform_sdk.settings import Settings

log = logging.getLogger(__name__)

SANDBOXED_KINDS = frozenset({"model", "app"})
TRAVERSE_MODE = 0o711  # root's folders on the way: others pass through, list nothing
SHARED_MODE = 0o755  # the sandboxes' venvs: everyone reads, only root writes
BUNDLE_DIR_MODE = 0o750
BUNDLE_FILE_MODE = 0o640
BUNDLE_EXEC_MODE = 0o750
SCRATCH_MODE = 0o700
# Environment variables an agent's generated environment may hand to a sandbox as they are
# (see ``sandbox_environment``); everything else of it stays behind.
PASSED_NAMES = frozenset(
    {
        "AIOT_HOME",  # a name only (the folder is closed to the sandbox); `aiot down` finds strays by it
        "AIOT_SERVICE_ID",
        "AIOT_NODE_ID",
        "AIOT_SERVICE_HOST",
        "AIOT_BUNDLE_DIR",
        "AIOT_AGENT_PID",
        "PYTHONUNBUFFERED",
    }
)
PASSED_PREFIXES = ("AIOT_PORT_", "AIOT_KAFKA__")
# Kafka settings that concern the broker `aiot up` runs, not a client: not handed on.
_BROKER_ONLY = frozenset(
    {
        "bootstrap_servers",
        "broker",
        "kafka_version",
        "jars_dir",
        "heap_mb",
        "jit",
        "gc",
        "java",
        "start_timeout_s",
    }
)
# The agent's own bus credential and where the platform's are: a sandbox gets its own credential
# (and own_topics with it) from the supervisor (``bus_environment``) or none, never the agent's.
_CREDENTIALS = frozenset(
    {"security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "secrets_file", "own_topics"}
)
_SECRET_WORDS = ("sasl.", "password", "secret", "ssl.key", "token")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Sandbox:
    """As whom and with which folders one model replica or app instance runs.

    ``uid``/``gid`` are None where the agent runs it unsandboxed (``sandbox.allow_unsandboxed``).
    """

    uid: int | None
    gid: int | None
    bundle: Path | None
    scratch: Path

    @property
    def confined(self) -> bool:
        return self.uid is not None


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _client_kafka_settings(settings: Settings) -> dict[str, str]:
    """The Kafka client settings of the agent, as ``AIOT_KAFKA__*`` (no broker knobs, no credentials,
    no secrets)."""
    env: dict[str, str] = {}
    for name, value in settings.kafka.model_dump(mode="json").items():
        if name in _BROKER_ONLY or name in _CREDENTIALS or value is None:
            continue
        if name == "extra":  # the platform's own credentials may be there
            kept = {
                key: item for key, item in value.items() if not any(w in key.lower() for w in _SECRET_WORDS)
            }
            env["AIOT_KAFKA__EXTRA"] = _env_value(kept)
            continue
        env[f"AIOT_KAFKA__{name.upper()}"] = _env_value(value)
    return env


def sandbox_environment(
    generated: Mapping[str, str],
    spec: ServiceSpec,
    settings: Settings,
    *,
    broker_kind: str,
    scratch: Path,
    path: str = SYSTEM_PATH,
) -> dict[str, str]:
    """The whole environment of a model replica or app instance: an allow-list, built from scratch.

    ``generated`` is what the agent's supervisor generated for the service (never the agent's own
    ``os.environ``). A sandbox gets, and nothing else:

    * its identity and place: ``AIOT_SERVICE_ID``, ``AIOT_NODE_ID``, ``AIOT_SERVICE_HOST``, its ports
      (``AIOT_PORT_*``), ``AIOT_BUNDLE_DIR``, ``AIOT_AGENT_PID`` (it stops when its agent dies),
      ``AIOT_HOME`` (a name: the folder stays closed to it);
    * the bus: every ``AIOT_KAFKA__*`` the supervisor set (the broker's address, the topic prefix,
      the instance's own credential), the broker's kind (``AIOT_KAFKA__BROKER``, which it cannot
      read from ``AIOT_HOME``'s run state) and the agent's Kafka client settings (timeouts,
      partitions, retention of the topics it may create; ``kafka.extra`` without any ``sasl.*``,
      password, secret, token or ``ssl.key*`` entry);
    * the timing settings the SDK reads, since the settings file is not readable to it:
      ``heartbeat.interval_s``, ``logging.level``/``queue_size``, ``model.call_timeout_s``/
      ``resolve_ttl_s``;
    * ``PATH`` (``path``), ``LANG``, ``PYTHONUNBUFFERED``, ``MALLOC_ARENA_MAX``
      (``PROCESS_ENVIRONMENT``), ``HOME`` and ``TMPDIR`` (its scratch folder);
    * the spec's own ``env`` (what the deployer set: the model's id and version, the app
      instance's config).

    Not: the database URL, the bucket (local path or Azure), SMTP, the first configurer's
    password, ``AIOT_CONFIG_FILE`` or any other setting of the agent.
    """
    env = {
        key: value
        for key, value in generated.items()
        if key in PASSED_NAMES or key.startswith(PASSED_PREFIXES)
    }
    for key, value in _client_kafka_settings(settings).items():
        env.setdefault(key, value)
    env.setdefault("AIOT_KAFKA__BROKER", broker_kind)
    env.update(
        {
            "AIOT_HEARTBEAT__INTERVAL_S": _env_value(settings.heartbeat.interval_s),
            "AIOT_LOGGING__LEVEL": settings.logging.level,
            "AIOT_LOGGING__QUEUE_SIZE": _env_value(settings.logging.queue_size),
            "AIOT_MODEL__CALL_TIMEOUT_S": _env_value(settings.model.call_timeout_s),
            "AIOT_MODEL__RESOLVE_TTL_S": _env_value(settings.model.resolve_ttl_s),
            "PATH": path,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            **PROCESS_ENVIRONMENT,
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
        }
    )
    env.update(spec.env)
    return env


# uids -------------------------------------------------------------------------------------------
class UidTable:
    """Owner → uid, kept in a JSON file under the agent's home; the agents of one home share it.

    An owner's uid is ``base + sha256(owner) mod count``, the next free one after it when taken
    (by another owner, or by an account of this machine's ``/etc/passwd``), and once given it is
    kept: the file, changed under an exclusive ``flock``, is the record.
    """

    def __init__(self, path: Path, base: int, count: int) -> None:
        self.path = path
        self.base = base
        self.count = count

    def uid_of(self, owner: str) -> int:
        if not owner:
            raise ValueError("an owner is needed to choose a sandbox uid")
        with self._locked():
            table = self._read()
            if owner in table:
                return table[owner]
            taken = set(table.values())
            start = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big") % self.count
            for step in range(self.count):
                uid = self.base + (start + step) % self.count
                if uid not in taken and not _account_exists(uid):
                    table[owner] = uid
                    self._write(table)
                    return uid
        raise Unavailable(
            f"no sandbox uid left for {owner!r}: all {self.count} of sandbox.uid_count "
            f"from {self.base} are taken; widen the range"
        )

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive(self.path.with_suffix(".lock"))

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {str(owner): int(uid) for owner, uid in data.items()}

    def _write(self, table: dict[str, int]) -> None:
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(table, tmp, indent=1, sort_keys=True)
        os.chmod(tmp.name, 0o600)
        os.replace(tmp.name, self.path)


def _account_exists(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# who may read what ------------------------------------------------------------------------------
def unreachable_for_others(path: Path, *, executable: bool = False) -> str | None:
    """Why a uid that is neither owner nor group member cannot read ``path`` (None: it can).

    Every folder above it must be enterable by others (o+x); a folder itself readable (o+rx), a
    file readable (o+r, and o+x when ``executable``).
    """
    path = path.resolve()
    for folder in reversed(path.parents):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return f"{folder} is not enterable by other users (mode {stat.filemode(os.stat(folder).st_mode)})"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{path} does not exist"
    needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) or executable else 0)
    if mode & needed != needed:
        return f"{path} is not readable by other users (mode {stat.filemode(mode)})"
    return None


def writable_by_others(path: Path) -> str | None:
    """Why ``path`` could be changed by a uid other than root's (None: it cannot)."""
    mode = os.stat(path).st_mode
    if os.stat(path).st_uid != 0 or mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} can be changed by users other than root (mode {stat.filemode(mode)})"
    return None


def sandbox_python(settings: Settings) -> Path:
    """The interpreter sandboxes run on (process runtime): ``sandbox.python``, else the platform's own
    when others may run it, else this machine's ``/usr/bin/python3.X`` (or ``/usr/local/bin``) of the
    platform's version (the same ABI, so the platform's site-packages load in it)."""
    configured = settings.sandbox.python
    if configured is not None:
        return configured
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable), Path("/usr/bin") / version, Path("/usr/local/bin") / version]
    for candidate in candidates:
        if candidate.exists() and _interpreter_problem(candidate) is None:
            return candidate
    return Path(sys.executable)


def _interpreter_problem(python: Path) -> str | None:
    real = python.resolve()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if real == Path(sys.executable).resolve():
        stdlib = Path(sys.base_prefix) / "lib" / version
    else:
        stdlib = real.parent.parent / "lib" / version
    return unreachable_for_others(real, executable=True) or unreachable_for_others(stdlib)


def platform_paths() -> list[Path]:
    """What a sandboxed process imports the platform from: its source root and its site-packages."""
    root = Path(__file__).resolve().parents[1]
    return [
        root,
        *(Path(entry) for entry in sys.path if entry.endswith("site-packages") and Path(entry).is_dir()),
    ]


# the sandboxes of one node ----------------------------------------------------------------------
class Sandboxes:
    """The sandboxes of one node: uids, bundle copies and scratch folders, held by their services."""

    def __init__(self, settings: Settings, *, process_runtime: bool) -> None:
        self.settings = settings
        self.config = settings.sandbox
        self.node_id = settings.agent.node_id
        self.process_runtime = process_runtime
        self.root = default_root(settings)
        self.node_root = self.root / self.node_id
        self.uids = UidTable(
            settings.home_dir / "sandbox" / "uids.json", self.config.uid_base, self.config.uid_count
        )
        self.confining = False
        self.refusal: str | None = None  # why models and apps are refused here, when they are
        self._lock = threading.Lock()
        self._held: dict[str, Path] = {}  # service id -> the bundle copy it runs in
        self._ready = False

    @property
    def venv_root(self) -> Path:
        return self.root / "venvs"

    def check(self) -> None:
        """Decide, at the agent's start, whether this node confines models and apps; say so."""
        problem = self._problem()
        if problem is None:
            self.confining = True
            log.info(
                "models and apps run sandboxed: a uid per owner from %d, under %s",
                self.config.uid_base,
                self.root,
            )
            return
        if self.config.allow_unsandboxed:
            log.warning(
                "MODELS AND APPS RUN UNSANDBOXED on %s, as this agent's user (uid %d) and able to read what "
                "it reads: %s. sandbox.allow_unsandboxed is set: this platform is for one team that trusts "
                "what it uploads.",
                self.node_id,
                os.geteuid(),
                problem,
            )
            return
        self.refusal = (
            f"node {self.node_id} cannot sandbox models and apps, so it runs none: {problem}. "
            "Fix that, or set sandbox.allow_unsandboxed (AIOT_SANDBOX__ALLOW_UNSANDBOXED=true) for one "
            "team that trusts what it uploads"
        )
        log.error("%s", self.refusal)

    def _problem(self) -> str | None:
        if not self.config.enabled:
            return "sandbox.enabled is false"
        if os.geteuid() != 0:
            return f"the agent runs as uid {os.geteuid()}, not root, so it cannot run code as other users"
        if self.process_runtime:
            if not os.access(self.config.setpriv, os.X_OK):
                return f"{self.config.setpriv} (util-linux setpriv) is missing: apt-get install util-linux"
            python = sandbox_python(self.settings)
            problem = _interpreter_problem(python)
            if problem is not None:
                return (
                    f"the sandboxes' interpreter {python} cannot be run by other users ({problem}); "
                    "set sandbox.python to one they can run, of the same Python version"
                )
            for path in platform_paths():
                problem = unreachable_for_others(path)
                if problem is not None:
                    return (
                        f"the platform's code is not readable by other users ({problem}); install it "
                        "where they can read it (e.g. /opt/aiot) or open the folders above it (o+rx)"
                    )
        if self.root.is_symlink():
            return f"sandbox.root {self.root} is a symbolic link"
        if self.root.exists():
            problem = writable_by_others(self.root)
            if problem is not None:
                return f"sandbox.root is not safe: {problem}"
        return None

    def _prepare_root(self) -> None:
        """Made on the first start of a model or app (a node that runs none leaves nothing behind)."""
        if self._ready:
            return
        self._ready = True
        for folder, mode in ((self.root, TRAVERSE_MODE), (self.venv_root, SHARED_MODE)):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, mode)
        shutil.rmtree(self.node_root, ignore_errors=True)  # a previous run's copies and scratch
        for folder in (self.node_root, self.node_root / "bundles", self.node_root / "scratch"):
            folder.mkdir(exist_ok=True)
            os.chmod(folder, TRAVERSE_MODE)

    def prepare(self, spec: ServiceSpec, bundle: Path | None) -> Sandbox:
        """The sandbox ``spec`` runs in: its uid, its owner's copy of ``bundle``, its scratch folder."""
        if self.refusal is not None:
            raise Unavailable(self.refusal)
        try:
            return self._prepare(spec, bundle)
        except OSError as exc:
            raise Unavailable(f"cannot prepare the sandbox of {spec.service_id!r}: {exc}") from exc

    def _prepare(self, spec: ServiceSpec, bundle: Path | None) -> Sandbox:
        with self._lock:
            self._prepare_root()
        if not self.confining:
            scratch = self._scratch(spec.service_id, None)
            return Sandbox(uid=None, gid=None, bundle=bundle, scratch=scratch)
        if not spec.owner:
            raise Unavailable(
                f"{spec.service_id!r} names no owner, so it has no sandbox uid: deploy it again "
                "with a deployer that sets ServiceSpec.owner"
            )
        uid = self.uids.uid_of(spec.owner)
        copy = None if bundle is None else self._copy(spec.service_id, bundle, uid)
        return Sandbox(uid=uid, gid=uid, bundle=copy, scratch=self._scratch(spec.service_id, uid))

    def release(self, service_id: str) -> None:
        """``service_id`` stopped for good: its scratch goes, and its bundle copy once nobody holds it."""
        with self._lock:
            copy = self._held.pop(service_id, None)
            if copy is not None and copy not in self._held.values():
                shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(self.node_root / "scratch" / service_id, ignore_errors=True)

    def close(self) -> None:
        """The agent stops (its services have): its node's folder goes; the shared venvs stay."""
        with self._lock:
            self._held.clear()
            shutil.rmtree(self.node_root, ignore_errors=True)

    def _scratch(self, service_id: str, uid: int | None) -> Path:
        scratch = self.node_root / "scratch" / service_id
        scratch.mkdir(mode=SCRATCH_MODE, parents=True, exist_ok=True)
        if uid is not None:
            os.chown(scratch, uid, uid)
        os.chmod(scratch, SCRATCH_MODE)
        return scratch

    def _copy(self, service_id: str, bundle: Path, uid: int) -> Path:
        """The owner's read-only copy of ``bundle`` (root's files, the owner's group): made once."""
        target = self.node_root / "bundles" / f"{uid}-{bundle.name}"
        with self._lock:
            if not target.is_dir():
                staging = target.with_name(target.name + ".tmp")
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(bundle, staging, symlinks=False)
                _restrict(staging, uid)
                os.replace(staging, target)
            self._held[service_id] = target
        return target


def _restrict(folder: Path, gid: int) -> None:
    """Everything under ``folder``: root's, group ``gid``; folders 0750, files 0640 (0750 if executable)."""
    for path in (folder, *folder.rglob("*")):
        os.chown(path, 0, gid, follow_symlinks=False)
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            os.chmod(path, BUNDLE_DIR_MODE)
        else:
            os.chmod(path, BUNDLE_EXEC_MODE if mode & stat.S_IXUSR else BUNDLE_FILE_MODE)


def default_root(settings: Settings) -> Path:
    """``sandbox.root``, else ``/tmp/aiot-sandbox-<hash of AIOT_HOME>`` (one per platform home)."""
    if settings.sandbox.root is not None:
        return settings.sandbox.root.expanduser().resolve()
    digest = hashlib.sha256(str(settings.home_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"aiot-sandbox-{digest}"


def remove_root(settings: Settings) -> None:
    """Remove the sandboxes of a platform home that is down (``aiot down``): copies, scratch, venvs."""
    shutil.rmtree(default_root(settings), ignore_errors=True)
