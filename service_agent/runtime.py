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
        self, spec: ServiceSpec, env: dict[str, str], on_output: OutputSink, workdir: Path | None = None
    ) -> RunningService:
        """Start ``spec`` in ``workdir`` (its unpacked bundle), else in the node's work directory."""
        ...


class VenvCache:
    """One virtualenv per distinct requirements set, created once with uv and reused.

    The key is a hash of the sorted requirement lines, so two services with the same
    requirements share a venv and the second starts without installing anything.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    @staticmethod
    def key(requirements: Sequence[str]) -> str:
        canonical = "\n".join(sorted(line.strip() for line in requirements if line.strip()))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def python(self, requirements: Sequence[str]) -> str:
        """The interpreter to run with: the platform's own, or a cached venv's."""
        if not any(line.strip() for line in requirements):
            return sys.executable
        venv = self.root / self.key(requirements)
        python = venv / "bin" / "python"
        with self._lock:
            if python.exists():
                return str(python)
            staging = venv.with_suffix(".tmp")
            self._run(["uv", "venv", "--quiet", "--python", sys.executable, str(staging)])
            installer = ["uv", "pip", "install", "--quiet", "--python", str(staging / "bin" / "python")]
            self._run([*installer, *requirements])
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
            (site_packages / "aiot-platform.pth").write_text("\n".join(paths) + "\n")

    @staticmethod
    def _run(command: list[str]) -> None:
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        except FileNotFoundError as exc:
            raise Unavailable("uv is not installed on this node: pip install uv") from exc
        except subprocess.CalledProcessError as exc:
            raise BadRequest(f"cannot install requirements: {exc.stderr.strip()[-500:]}") from exc


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
    """Runs each service as a subprocess of the agent, with a cached venv for its requirements."""

    name = "process"

    def __init__(self, venvs: VenvCache, workdir: Path) -> None:
        self.venvs = venvs
        self.workdir = workdir

    def start(
        self, spec: ServiceSpec, env: dict[str, str], on_output: OutputSink, workdir: Path | None = None
    ) -> RunningService:
        command = spec.argv(self.venvs.python(spec.requirements))
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
