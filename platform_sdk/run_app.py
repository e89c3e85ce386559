"""Runs one app instance: ``python -m platform_sdk.run_app`` in the app's unpacked bundle.

The deployer starts every app instance with this command (``AIOT_BUNDLE_DIR`` the bundle,
``AIOT_APP__INSTANCE`` its generated config). It reads ``app.json``, starts the SDK runtime
(heartbeats, logs), builds the ``App`` and calls the manifest's entrypoint with it. An
entrypoint that raises ends the process with code 1 and its traceback on stderr, so the
last output the agent keeps (and the heartbeat monitor's incident) says why.

Its own module, apart from ``platform_sdk.app``: the package imports that one, and
``python -m`` of a module the package already imported warns on every start.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from platform_sdk.app import App, load_manifest
from platform_sdk.artifacts import AppManifest
from platform_sdk.errors import BadRequest
from platform_sdk.model_client import ModelClient
from platform_sdk.runtime import PlatformRuntime
from platform_sdk.settings import get_settings

log = logging.getLogger(__name__)


def _entrypoint(bundle: Path, manifest: AppManifest) -> Callable[[App], Any]:
    sys.path.insert(0, str(bundle))
    module = importlib.import_module(manifest.entry_module)
    function = getattr(module, manifest.entry_attribute, None)
    if not callable(function):
        raise BadRequest(f"{manifest.entrypoint}: the module has no function {manifest.entry_attribute!r}")
    return function  # type: ignore[no-any-return]


def main() -> None:
    settings = get_settings()
    bundle = (settings.bundle_dir or Path.cwd()).resolve()
    manifest, config = load_manifest(bundle), settings.app.instance
    if config is None:
        raise SystemExit("an app instance needs its config: AIOT_APP__INSTANCE is set by the deployer")
    runtime = PlatformRuntime(settings)
    runtime.start()
    app = App(manifest, config, runtime, ModelClient.from_settings(settings))
    signal.signal(signal.SIGTERM, lambda *_: app.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: app.stopping.set())
    try:
        log.info(
            "app %s %s: instance %s at %s",
            manifest.name,
            manifest.version,
            config.instance_id,
            config.location,
        )
        _entrypoint(bundle, manifest)(app)
    except Exception:
        log.exception("app %s instance %s failed", manifest.name, config.instance_id)
        traceback.print_exc(file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        app.close()
        runtime.stop()


if __name__ == "__main__":
    main()
