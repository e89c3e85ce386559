"""Runtimes: how an agent runs a service. One interface; ``process`` here, ``docker`` in ``docker_runtime``.

A runtime turns a ``ServiceSpec`` plus the environment the agent generated
(identity, bus address, ports) into a running thing and hands back a
``RunningService`` handle the agent polls for exit and stops. Output (stdout and
stderr) is delivered line by line to the ``on_output`` callback the agent
passes, which ships it to the platform logger.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from platform_core.nodes import ServiceSpec
from platform_sdk.errors import BadRequest, Unavailable
from service_agent.sandbox import Sandbox

OutputSink = Callable[[str], None]


class RunningService(Protocol):
    """A started service, as a runtime sees it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def container_id(self) -> str | None: ...

    def exit_code(self) -> int | None:
        """None while it runs."""
        ...

    def stop(self, timeout: float) -> None:
        """Ask it to stop; kill it when it has not stopped within ``timeout``."""
        ...


class Runtime(Protocol):
    name: str

    def start(
        self,
        spec: ServiceSpec,
        env: dict[str, str],
        on_output: OutputSink,
        workdir: Path | None = None,
        sandbox: Sandbox | None = None,
    ) -> RunningService:
        """Start ``spec`` in ``workdir`` (its unpacked bundle), else in the node's work directory.

        With ``sandbox`` (a model or app): as its uid, in its bundle copy, with no capabilities.
        """
        ...


class VenvCache:
    """One virtualenv per distinct requirements set, created once with uv and reused.

    The key is a hash of the sorted requirement lines, so two services with the same
    requirements share a venv and the second starts without installing anything.

    A ``shared`` cache (the sandboxes') builds every venv, one without requirements too, on
    ``base`` (an interpreter other users may run), readable by everyone and writable by none
    but the agent's user (umask 022; the sandboxes run as other uids).
    """

    def __init__(self, root: Path, base: str | None = None, *, shared: bool = False) -> None:
        self.root = root
        self.base = base or sys.executable
        self.shared = shared
        self._lock = threading.Lock()

    @staticmethod
    def key(requirements: Sequence[str]) -> str:
        canonical = "\n".join(sorted(line.strip() for line in requirements if line.strip()))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def folder(self, requirements: Sequence[str]) -> Path:
        """The venv of ``requirements`` on this cache's base interpreter."""
        if self.base == sys.executable:
            return self.root / self.key(requirements)
        return self.root / f"{hashlib.sha256(self.base.encode()).hexdigest()[:8]}-{self.key(requirements)}"

    def python(self, requirements: Sequence[str]) -> str:
        """The interpreter to run with: the platform's own, or a cached venv's."""
        if not self.shared and not any(line.strip() for line in requirements):
            return sys.executable
        venv = self.folder(requirements)
        python = venv / "bin" / "python"
        with self._lock:
            if python.exists():
                return str(python)
            staging = venv.with_suffix(".tmp")
            uv = uv_command()
            self._run([uv, "venv", "--quiet", "--python", self.base, str(staging)])
            installer = [uv, "pip", "install", "--quiet", "--compile-bytecode"]
            wanted = [line.strip() for line in requirements if line.strip()]
            if wanted:
                self._run([*installer, "--python", str(staging / "bin" / "python"), *wanted])
            self._link_platform(staging)
            os.replace(staging, venv)
        return str(python)

    @staticmethod
    def _link_platform(venv: Path) -> None:
        """Let the venv import the platform (the SDK, its dependencies) after its own packages.

        uv builds the venv on the base interpreter, so neither ``--system-site-packages`` nor
        the platform's editable install would be seen; a ``.pth`` file appends the platform's
        site-packages and source root to ``sys.path``, behind the service's requirements.
        """
        platform_root = str(Path(__file__).resolve().parents[1])
        paths = [path for path in sys.path if path.endswith("site-packages")] + [platform_root]
        for site_packages in venv.glob("lib/python*/site-packages"):
            pth = site_packages / "aiot-platform.pth"
            pth.write_text("\n".join(paths) + "\n")
            pth.chmod(0o644)

    def _run(self, command: list[str]) -> None:
        try:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
                umask=0o022 if self.shared else -1,
            )
        except FileNotFoundError as exc:
            raise Unavailable("uv is not installed on this node: pip install uv") from exc
        except subprocess.CalledProcessError as exc:
            raise BadRequest(f"cannot install requirements: {exc.stderr.strip()[-500:]}") from exc


def uv_command() -> str:
    """uv beside the agent's interpreter (a bootstrapped host's venv has the release's uv there),
    else the one on PATH (a checkout's environment)."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else "uv"


class ProcessService:
    """A service running as a child process in its own session (so its helpers stop with it)."""

    def __init__(self, process: subprocess.Popen[bytes], on_output: OutputSink, name: str) -> None:
        self.process = process
        self._reader = threading.Thread(target=self._read, args=(on_output,), name=f"aiot-output-{name}")
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def container_id(self) -> str | None:
        return None

    def _read(self, on_output: OutputSink) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for raw in self.process.stdout:
                on_output(raw.decode(errors="replace").rstrip("\n"))

    def exit_code(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout: float) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            # A stopped (SIGSTOP) process never acts on SIGTERM; SIGCONT lets it.
            self._signal(signal.SIGCONT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        self._reader.join(timeout)

    def _signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


class ProcessRuntime:
    """Runs each service as a subprocess of the agent, with a cached venv for its requirements.

    A sandboxed one (``sandbox`` with a uid) runs on a venv of ``sandbox_venvs`` through
    ``setpriv``: its owner's uid and gid, no supplementary groups, no capabilities (inheritable
    and bounding sets emptied), no new privileges (``PR_SET_NO_NEW_PRIVS``: setuid files do nothing).
    """

    name = "process"

    def __init__(
        self,
        venvs: VenvCache,
        workdir: Path,
        sandbox_venvs: VenvCache | None = None,
        setpriv: Path = Path("/usr/bin/setpriv"),
    ) -> None:
        self.venvs = venvs
        self.workdir = workdir
        self.sandbox_venvs = sandbox_venvs
        self.setpriv = setpriv

    def start(
        self,
        spec: ServiceSpec,
        env: dict[str, str],
        on_output: OutputSink,
        workdir: Path | None = None,
        sandbox: Sandbox | None = None,
    ) -> RunningService:
        confined = sandbox is not None and sandbox.confined
        if confined and self.sandbox_venvs is None:
            raise Unavailable(f"cannot sandbox {spec.service_id!r}: this runtime has no sandbox venvs")
        venvs = self.sandbox_venvs if confined and self.sandbox_venvs is not None else self.venvs
        python = venvs.python(spec.requirements)
        command = spec.argv(python)
        if sandbox is not None and sandbox.uid is not None and sandbox.gid is not None:
            command = [*self.confinement(sandbox.uid, sandbox.gid), *command]
            env = {**env, "PATH": f"{Path(python).parent}:{env.get('PATH', '')}"}
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The child stops itself when this agent dies, as it would with a lost node (see the heartbeat).
        env = {**env, "AIOT_AGENT_PID": str(os.getpid())}
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir or self.workdir,
                start_new_session=True,
            )
        except OSError as exc:
            raise BadRequest(f"cannot start {spec.service_id!r}: {exc}") from exc
        return ProcessService(process, on_output, spec.service_id)

    def confinement(self, uid: int, gid: int) -> list[str]:
        """The ``setpriv`` prefix that runs a command as ``uid:gid`` with no privileges at all."""
        return [
            str(self.setpriv),
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
