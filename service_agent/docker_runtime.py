"""The ``docker`` runtime: each service in its own container on the node's Docker engine.

It owns the images it generates (``aiot-svc:<hash>``) and the containers it starts, and
talks to one thing: the Docker engine, through the docker SDK, reached the way the
``docker`` command reaches it (``DOCKER_HOST``, else the local socket). The connection is
made on the first start, never in the constructor.

Life of a start (``DockerRuntime.start``):

1. **Image.** The key of the image is a hash of everything that goes into it: the
   generated Dockerfile, the base image's id (``agent.docker_base_image``, built locally
   by ``.ci/docker-setup.sh``: no registry is reachable), the platform's runtime
   dependencies pinned to the versions this node runs, the platform's source files, this
   host's CA bundle and the service's requirements. When ``aiot-svc:<key>`` exists it is
   used as it is (nothing is built); otherwise it is built with ``network_mode="host"``
   (pip reaches PyPI through the host), its output shipped to ``on_output``. Layers go
   from the rarely to the often changed: CA bundle, a venv, the platform's dependencies,
   the platform's packages (found through a ``.pth`` file), the service's requirements.
   The engine's layer cache makes a new platform source or a new requirement set cost
   only the layers after it. Every image, intermediate layers included, is labelled
   ``aiot.platform=1``: ``docker image prune -a --filter label=aiot.platform=1`` reclaims
   the ones no container uses.
2. **Container.** Host networking (services bind 127.0.0.1 as on the process runtime);
   the environment the agent generated, minus the host's path-like variables (``PATH``,
   ``HOME``, ``PYTHONPATH``, ...) that mean nothing inside. A platform service gets
   ``AIOT_HOME`` bind-mounted read-write at the same path, the working directory
   ``AIOT_HOME/work/<node>`` as on the process runtime, and the agent's uid/gid, so files
   written there belong to the agent's user. A model or app (``sandbox``) gets its owner's
   uid, a read-only root filesystem, no capabilities, ``no-new-privileges``, and only its
   bundle copy (read-only) and scratch folder mounted (``DockerRuntime.confinement``);
   ``--init`` (tini as PID 1 forwards SIGTERM to the service's process group, which
   a Python PID 1 would ignore); the spec's CPU and memory limits; labels
   ``aiot.platform``, ``aiot.home``, ``aiot.node_id``, ``aiot.service_id``.
3. **Output.** One thread per container (``aiot-docker-output-<service>``) follows the
   container's log stream and hands every line to ``on_output``; the stream ends when the
   container exits, or is closed by ``stop()``.
4. **End.** ``DockerService.exit_code()`` inspects the container; once it has exited the
   code is kept and the container removed (its output has been shipped). ``stop(timeout)``
   thaws a paused or SIGSTOPped container, then ``docker stop`` (SIGTERM, SIGKILL after
   ``timeout``), then removes it. ``remove_containers(home)`` removes whatever a
   platform's agents left behind (``aiot down``).

Errors of the docker SDK never leave this module: an absent engine is ``Unavailable``
("start dockerd"), a missing base image is ``Unavailable`` naming the script that
builds it, a requirement that does not install or a limit the engine refuses is
``BadRequest``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests

from platform_core.nodes import ServiceSpec
from platform_sdk.errors import BadRequest, PlatformError, Unavailable
from platform_sdk.settings import Settings
from service_agent.runtime import OutputSink, RunningService
from service_agent.sandbox import Sandbox

log = logging.getLogger(__name__)

DISTRIBUTION = "aiot-platform"
PLATFORM_ROOT = Path(__file__).resolve().parents[1]
# The packages of the platform's wheel ([tool.hatch.build.targets.wheel] in pyproject.toml),
# and its data directories; what exists of them is copied into every image.
PLATFORM_PACKAGES = (
    "platform_sdk",
    "platform_core",
    "bootstrapper",
    "service_agent",
    "node_manager",
    "heartbeat",
    "logger",
    "web",
    "aiot",
    "benchmarks",
    "ai_manager",
    "deployer",
    "device_manager",
    "simulators",
    "app_manager",
    "scheduler",
)
PLATFORM_DATA = ("configs",)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

IMAGE_REPOSITORY = "aiot-svc"
IMAGE_ROOT = "/opt/aiot"
IMAGE_VENV = f"{IMAGE_ROOT}/venv"
IMAGE_PYTHON = f"{IMAGE_VENV}/bin/python"
IMAGE_PLATFORM = f"{IMAGE_ROOT}/platform"

LABEL_PLATFORM = "aiot.platform"
LABEL_HOME = "aiot.home"
LABEL_NODE = "aiot.node_id"
LABEL_SERVICE = "aiot.service_id"
LABEL_IMAGE_KEY = "aiot.image_key"
LABEL_REQUIREMENTS = "aiot.requirements"

ENGINE_HINT = "start dockerd (as root: `bash .ci/docker-setup.sh` installs and starts it)"
BASE_IMAGE_HINT = "build the base image with `bash .ci/docker-setup.sh`"
API_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 1800
BUILD_LINES_KEPT = 40
READER_JOIN_S = 2.0
# Variables of the agent's environment that name things of the host, not of the container.
HOST_ONLY_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "PWD",
        "OLDPWD",
        "SHELL",
        "SHLVL",
        "_",
        "HOSTNAME",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONEXECUTABLE",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
    }
)

# The build context's files are made readable by everyone (the agent's umask is 077) and COPY
# keeps their modes: a sandboxed container runs as its owner's uid and must read the platform.
DOCKERFILE = """\
FROM {base}
LABEL aiot.platform=1
# platform files: readable by every uid
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
{ca}RUN python3 -m venv {venv} \\
 && purelib="$({python} -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \\
 && echo {platform} > "$purelib/aiot-platform.pth"
COPY platform-requirements.txt {root}/platform-requirements.txt
RUN {python} -m pip install -r {root}/platform-requirements.txt
COPY platform {platform}
RUN {python} -m compileall -q {platform}
COPY service-requirements.txt {root}/service-requirements.txt
RUN if [ -s {root}/service-requirements.txt ]; then \\
    {python} -m pip install -r {root}/service-requirements.txt; fi
ENV VIRTUAL_ENV={venv} PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONUNBUFFERED=1 LANG=C.UTF-8
WORKDIR {root}
"""

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


# platform content ------------------------------------------------------------------------------
def canonical_requirements(requirements: Sequence[str]) -> list[str]:
    """Sorted, stripped, non-empty requirement lines: equal sets give equal images."""
    return sorted({line.strip() for line in requirements if line.strip()})


def platform_requirements() -> list[str]:
    """The platform's runtime dependencies, each pinned to the version this node runs.

    Read from the installed distribution's metadata (an editable ``uv sync`` install or
    the wheel), else from ``pyproject.toml`` unpinned. Extras (``dev``, ``embedded``)
    are left out: a service needs neither the test tools nor the bundled broker.
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        pyproject = PLATFORM_ROOT / "pyproject.toml"
        try:
            declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
            raise Unavailable(
                f"the platform's dependency list is unknown: install it (uv sync / pip install) "
                f"or run it from its source tree ({exc})"
            ) from exc
    pinned: list[str] = []
    for line in declared:
        requirement, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        match = _REQUIREMENT_NAME.match(requirement)
        if match is None or marker.strip():
            pinned.append(line)  # pip evaluates the marker; no pin
            continue
        name, extras = match.group(1), match.group(2) or ""
        try:
            pinned.append(f"{name}{extras}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(line)
    return sorted(pinned)


def platform_files(root: Path = PLATFORM_ROOT) -> list[tuple[Path, str]]:
    """The platform's packages and data files as (absolute path, path inside the image's copy)."""
    files: list[tuple[Path, str]] = []
    for top in (*PLATFORM_PACKAGES, *PLATFORM_DATA):
        folder = root / top
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or path.suffix in (".pyc", ".pyo"):
                continue
            if any(part == "__pycache__" or part.startswith(".") for part in relative.parts):
                continue
            files.append((path, relative.as_posix()))
    return files


@dataclass(frozen=True)
class PlatformContent:
    """What every image gets from the platform, and its fingerprint (read once per runtime)."""

    requirements: list[str]
    files: list[tuple[Path, str]]
    ca_bundle: bytes | None
    fingerprint: str

    @classmethod
    def read(cls) -> PlatformContent:
        requirements = platform_requirements()
        files = platform_files()
        ca_bundle = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else None
        digest = hashlib.sha256()
        digest.update("\n".join(requirements).encode())
        digest.update(hashlib.sha256(ca_bundle or b"").digest())
        for path, relative in files:
            digest.update(relative.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return cls(requirements, files, ca_bundle, digest.hexdigest())


# errors ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn docker SDK and transport errors into the platform's errors, saying what to do."""
    try:
        yield
    except PlatformError:
        raise
    except docker.errors.APIError as exc:
        explanation = exc.explanation or str(exc)
        if exc.is_client_error():
            raise BadRequest(f"{action}: the Docker engine refused: {explanation}") from exc
        raise Unavailable(f"{action}: the Docker engine failed: {explanation}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise Unavailable(f"{action}: cannot reach the Docker engine ({exc}); {ENGINE_HINT}") from exc


def _probe_local_socket() -> None:
    """Fail early, and cleanly, when the engine's local socket does not answer.

    The docker SDK leaves an unclosed socket behind when it cannot connect to a unix
    socket; probing it here first keeps an absent engine a plain ``Unavailable``.
    """
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    scheme, _, path = host.partition("://")
    if scheme not in ("unix", "http+unix"):
        return  # tcp:// or ssh://: the SDK reports those itself
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect("/" + path.lstrip("/"))
        except OSError as exc:
            raise Unavailable(f"no Docker engine answers at {host} ({exc}); {ENGINE_HINT}") from exc


def _connect(max_pool_size: int = 16) -> Any:
    _probe_local_socket()
    with translated("connecting to the Docker engine"):
        return docker.from_env(timeout=API_TIMEOUT_S, max_pool_size=max_pool_size)


def _resolved(home: str | os.PathLike[str]) -> str:
    return str(Path(home).expanduser().resolve())


# the runtime ------------------------------------------------------------------------------------
class DockerRuntime:
    """Runs each service as a container of a generated, cached image on the node's Docker engine."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._content: PlatformContent | None = None
        self._connect_lock = threading.Lock()
        self._build_locks: dict[str, threading.Lock] = {}

    # connection ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The docker SDK client; connects (and checks the engine answers) on first use."""
        with self._connect_lock:
            if self._client is None:
                # One connection per followed log stream, plus room for the calls around them.
                self._client = _connect(max_pool_size=self.settings.agent.capacity + 8)
            return self._client

    def close(self) -> None:
        """Drop the engine connection; the containers keep running."""
        with self._connect_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # images -------------------------------------------------------------------------------------
    def platform_content(self) -> PlatformContent:
        if self._content is None:
            self._content = PlatformContent.read()
        return self._content

    def dockerfile(self, content: PlatformContent) -> str:
        ca = "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n" if content.ca_bundle else ""
        return DOCKERFILE.format(
            base=self.settings.agent.docker_base_image,
            ca=ca,
            root=IMAGE_ROOT,
            venv=IMAGE_VENV,
            python=IMAGE_PYTHON,
            platform=IMAGE_PLATFORM,
        )

    def image_for(self, requirements: Sequence[str], on_output: OutputSink | None = None) -> str:
        """The tag of the image that runs a service with ``requirements``; built only when absent."""
        content = self.platform_content()
        wanted = canonical_requirements(requirements)
        dockerfile = self.dockerfile(content)
        base = self.settings.agent.docker_base_image
        with translated(f"preparing the image for requirements {wanted}"):
            try:
                base_id = self.client.images.get(base).id
            except docker.errors.ImageNotFound as exc:
                raise Unavailable(f"the base image {base} is missing; {BASE_IMAGE_HINT}") from exc
            key = hashlib.sha256(
                json.dumps([dockerfile, base_id, content.fingerprint, wanted]).encode()
            ).hexdigest()[:20]
            tag = f"{IMAGE_REPOSITORY}:{key}"
            if self._image_exists(tag):
                return tag
            # One build per image at a time; starts of other images do not wait for it.
            with self._connect_lock:
                build_lock = self._build_locks.setdefault(tag, threading.Lock())
            with build_lock:
                if not self._image_exists(tag):
                    self._build(tag, key, dockerfile, content, wanted, on_output)
            return tag

    def _image_exists(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def _build(
        self,
        tag: str,
        key: str,
        dockerfile: str,
        content: PlatformContent,
        requirements: list[str],
        on_output: OutputSink | None,
    ) -> None:
        log.info("building %s (requirements: %s)", tag, requirements or "none")
        with tempfile.TemporaryDirectory(prefix="aiot-image-") as context_dir:
            context = Path(context_dir)
            (context / "Dockerfile").write_text(dockerfile)
            if content.ca_bundle is not None:
                (context / "ca-certificates.crt").write_bytes(content.ca_bundle)
            (context / "platform-requirements.txt").write_text("\n".join(content.requirements) + "\n")
            (context / "service-requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
            for source, relative in content.files:
                target = context / "platform" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            _readable_by_all(context)
            stream = self.client.api.build(
                path=str(context),
                tag=tag,
                labels={
                    LABEL_PLATFORM: "1",
                    LABEL_IMAGE_KEY: key,
                    LABEL_REQUIREMENTS: json.dumps(requirements),
                },
                network_mode="host",
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                timeout=BUILD_TIMEOUT_S,
            )
            tail: collections.deque[str] = collections.deque(maxlen=BUILD_LINES_KEPT)
            for chunk in stream:
                for line in str(chunk.get("stream", "")).splitlines():
                    if line.strip():
                        tail.append(line)
                        if on_output is not None:
                            on_output(f"[image build] {line}")
                if "error" in chunk:
                    self._build_failed(str(chunk["error"]), list(tail), requirements)

    @staticmethod
    def _build_failed(error: str, tail: list[str], requirements: list[str]) -> None:
        output = "\n".join(tail[-15:])
        if "service-requirements.txt" in error:
            raise BadRequest(
                f"cannot install the requirements {requirements}: {error}\n{output}",
                details={"build_output": tail},
            )
        raise Unavailable(
            f"cannot build the platform's image (is PyPI reachable from this node?): {error}\n{output}",
            details={"build_output": tail},
        )

    # containers ---------------------------------------------------------------------------------
    def start(
        self,
        spec: ServiceSpec,
        env: dict[str, str],
        on_output: OutputSink,
        workdir: Path | None = None,
        sandbox: Sandbox | None = None,
    ) -> RunningService:
        command = spec.argv(IMAGE_PYTHON)
        image = self.image_for(spec.requirements, on_output)
        node_id = self.settings.agent.node_id
        home = _resolved(env.get("AIOT_HOME") or self.settings.home_dir)
        environment = {
            key: value for key, value in env.items() if key in spec.env or key not in HOST_ONLY_VARIABLES
        }
        environment["AIOT_HOME"] = home
        # tini (--init) signals the service's whole process group, as the process runtime does.
        environment.setdefault("TINI_KILL_PROCESS_GROUP", "1")
        name = f"aiot-{_NAME_UNSAFE.sub('-', node_id)}-{spec.service_id}-{secrets.token_hex(3)}"
        limits: dict[str, Any] = {}
        if spec.cpu_limit is not None:
            limits["nano_cpus"] = round(spec.cpu_limit * 1e9)
        if spec.memory_mb is not None:
            limits["mem_limit"] = f"{spec.memory_mb}m"
        if sandbox is not None:
            limits.update(self.confinement(sandbox, environment))
            working_dir = str(workdir or sandbox.scratch)
        else:
            node_workdir = Path(home) / "work" / node_id
            node_workdir.mkdir(parents=True, exist_ok=True)
            limits.update(volumes={home: {"bind": home, "mode": "rw"}}, user=f"{os.getuid()}:{os.getgid()}")
            working_dir = str(workdir or node_workdir)
        with translated(f"starting {spec.service_id!r} in a container"):
            container = self.client.containers.create(
                image,
                command,
                name=name,
                environment=environment,
                labels={
                    LABEL_PLATFORM: "1",
                    LABEL_HOME: home,
                    LABEL_NODE: node_id,
                    LABEL_SERVICE: spec.service_id,
                },
                network_mode="host",
                working_dir=working_dir,
                init=True,
                log_config=docker.types.LogConfig(
                    type="json-file", config={"max-size": "10m", "max-file": "2"}
                ),
                **limits,
            )
            try:
                container.start()
                container.reload()
                stream = container.logs(stream=True, follow=True, stdout=True, stderr=True)
            except BaseException:
                with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                    container.remove(force=True)
                raise
        return DockerService(container, stream, on_output, spec.service_id)

    @staticmethod
    def confinement(sandbox: Sandbox, environment: dict[str, str]) -> dict[str, Any]:
        """A model's or app's container: its owner's uid, nothing writable but its scratch folder.

        Non-root ``--user`` (the agent's own where it runs unsandboxed), ``--read-only`` root
        filesystem, ``--cap-drop ALL``, ``no-new-privileges``; mounted: its bundle (read-only) and
        its scratch folder (``HOME``, ``TMPDIR``), each at its host path, and a small ``/tmp``
        tmpfs. No ``AIOT_HOME``. The network stays the host's: the broker listens on 127.0.0.1.
        """
        volumes = {str(sandbox.scratch): {"bind": str(sandbox.scratch), "mode": "rw"}}
        if sandbox.bundle is not None:
            volumes[str(sandbox.bundle)] = {"bind": str(sandbox.bundle), "mode": "ro"}
        uid = sandbox.uid if sandbox.uid is not None else os.getuid()
        gid = sandbox.gid if sandbox.gid is not None else os.getgid()
        environment.update(HOME=str(sandbox.scratch), TMPDIR=str(sandbox.scratch))
        return {
            "user": f"{uid}:{gid}",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "volumes": volumes,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,noexec,size=64m"},
        }


def _readable_by_all(folder: Path) -> None:
    """Folders 0755 and files 0644 under ``folder`` (itself included): COPY keeps the modes."""
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


class DockerService:
    """A service running in a container: its output thread, exit code and stop."""

    def __init__(self, container: Any, stream: Any, on_output: OutputSink, service_id: str) -> None:
        self._container = container
        self._stream = stream
        self._container_id: str = container.id
        self._pid: int | None = container.attrs.get("State", {}).get("Pid") or None
        self._exit: int | None = None
        self._removed = False
        self._lock = threading.Lock()
        # Daemon: a container can outlive the agent, and its output must not keep the agent alive.
        self._reader = threading.Thread(
            target=self._read, args=(on_output,), name=f"aiot-docker-output-{service_id}", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int | None:
        """The host pid of the container's main process (tini); None once it has exited."""
        return None if self._exit is not None else self._pid

    @property
    def container_id(self) -> str | None:
        return self._container_id

    def _read(self, on_output: OutputSink) -> None:
        pending = b""
        try:
            for chunk in self._stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    on_output(line.decode(errors="replace").rstrip("\r"))
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            log.debug("output stream of %s ended: %s", self._container_id[:12], exc)
        if pending:
            on_output(pending.decode(errors="replace").rstrip("\r"))

    def exit_code(self) -> int | None:
        """None while it runs; once it has exited, its code (and the container is removed).

        A container removed behind the platform's back reports -1. When the engine does not
        answer, the state is unknown and None is returned (the agent asks again).
        """
        if self._exit is not None:
            return self._exit
        try:
            self._container.reload()
        except docker.errors.NotFound:
            self._record_exit(-1)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("cannot inspect container %s: %s", self._container_id[:12], exc)
            return None
        else:
            state = self._container.attrs.get("State", {})
            if state.get("Status") not in ("exited", "dead"):
                return None
            self._record_exit(int(state.get("ExitCode", -1)))
        self._finish()
        return self._exit

    def stop(self, timeout: float) -> None:
        """SIGTERM, SIGKILL after ``timeout``; thaws a paused or SIGSTOPped one first; then remove it."""
        if self._exit is None:
            try:
                self._halt(timeout)
            except docker.errors.NotFound:
                self._record_exit(-1)
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                # Best effort, like killing a process: the forced removal below still tries.
                log.warning("cannot stop container %s: %s", self._container_id[:12], exc)
        self._finish()

    def _halt(self, timeout: float) -> None:
        container = self._container
        container.reload()
        status = container.attrs.get("State", {}).get("Status")
        if status == "paused":
            container.unpause()
        if status in ("running", "paused", "restarting"):
            # A SIGSTOPped process acts on nothing but SIGKILL until it is continued.
            with contextlib.suppress(docker.errors.APIError):
                container.kill(signal="SIGCONT")
            container.stop(timeout=max(1, math.ceil(timeout)))
            container.reload()
        self._record_exit(int(container.attrs.get("State", {}).get("ExitCode", -1)))

    def _record_exit(self, code: int) -> None:
        with self._lock:
            if self._exit is None:
                self._exit = code

    def _finish(self) -> None:
        """After the exit: let the reader deliver the last lines, then remove the container."""
        self._reader.join(READER_JOIN_S)
        if self._reader.is_alive():
            self._stream.close()
            self._reader.join(READER_JOIN_S)
        with self._lock:
            if self._removed:
                return
            self._removed = True
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            with self._lock:
                self._removed = False
            log.warning("cannot remove container %s: %s", self._container_id[:12], exc)


def remove_containers(home: str, node_id: str | None = None) -> int:
    """Remove every container (running or not) the agents of the platform at ``home`` started.

    ``aiot down`` calls it so that no container outlives its platform; with ``node_id``, only
    that node's (a node the local provider retires). Without a Docker engine there is nothing
    to remove, and 0 is returned.
    """
    try:
        client = _connect()
    except Unavailable as exc:
        log.debug("no Docker engine, so no containers to remove: %s", exc)
        return 0
    removed = 0
    try:
        with translated(f"removing the containers of {home}"):
            labels = [f"{LABEL_PLATFORM}=1", f"{LABEL_HOME}={_resolved(home)}"]
            if node_id is not None:
                labels.append(f"{LABEL_NODE}={node_id}")
            filters = {"label": labels}
            for container in client.containers.list(all=True, filters=filters):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
                    removed += 1
    finally:
        client.close()
    return removed
