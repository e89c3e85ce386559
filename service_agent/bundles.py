"""Deploy bundles on a node: fetched from the blob store once, unpacked, shared by the services that run them.

A ``StartService`` whose spec names a ``BundleRef`` runs in ``<home>/bundles/<node>/<sha256>``:
the first start downloads the zip, checks its hash, unpacks it through the platform's
safe archive reader (into a staging folder renamed into place, so a half-unpacked
bundle never exists) and later starts reuse the folder. Replicas of one model version
on one node therefore share one copy, and a restart fetches nothing.

A folder stays while a service of this node runs in it (each service holds its bundle from
``path`` until ``release``) or while its zip is still in the bucket, so the next instance of
an app starts without fetching it again. Once no service here holds it and its zip is gone
(the model was deleted, which removes its bundles, or the app was), the folder is removed:
at once when the last service lets go after the zip went, else by ``prune``, which the agent
runs every ``agent.bundle_check_interval_s``. Each node has its own folder (nodes on one
machine share ``AIOT_HOME``), so one agent never removes what another's services run in; an
agent that starts prunes before it runs anything, which clears what a previous run left (it
knows no folder's zip yet, so a later start fetches it again).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from platform_core.archive import Archive
from platform_core.blobstore import BlobStore
from platform_core.nodes import BundleRef
from platform_sdk.errors import PlatformError, ValidationFailed

log = logging.getLogger(__name__)


class BundleCache:
    """One node's unpacked bundles under ``root``, by hash, held by the services that run in them."""

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # service id -> the sha256 of the bundle it runs in
        self._keys: dict[str, str] = {}  # sha256 -> the blob key of each bundle unpacked here

    def path(self, bundle: BundleRef, user: str) -> Path:
        """The unpacked bundle, fetched and unpacked first if this node has not got it; ``user`` holds it."""
        target = self.root / bundle.sha256
        with self._lock:
            if not target.is_dir():
                data = self.blobs.get(bundle.key)
                actual = hashlib.sha256(data).hexdigest()
                if actual != bundle.sha256:
                    raise ValidationFailed(
                        f"bundle {bundle.key} has hash {actual[:12]}…, not the {bundle.sha256[:12]}… "
                        "the deployer recorded: redeploy it"
                    )
                self.root.mkdir(parents=True, exist_ok=True)
                with Archive.open(data, label=bundle.key) as archive:
                    archive.extract_to(target)
            self._keys[bundle.sha256] = bundle.key
            previous = self._held.get(user)
            self._held[user] = bundle.sha256
        if previous is not None and previous != bundle.sha256:
            self._prune([previous])
        return target

    def release(self, user: str) -> None:
        """``user`` no longer runs in its bundle: the folder goes if no one holds it and its zip is gone."""
        with self._lock:
            sha256 = self._held.pop(user, None)
        if sha256 is not None:
            self._prune([sha256])

    def prune(self) -> None:
        """Remove every folder no service holds whose zip is gone from the bucket (or unknown here)."""
        with self._lock:
            names = [entry.name for entry in self.root.iterdir()] if self.root.is_dir() else []
        self._prune(names)

    def _prune(self, names: Iterable[str]) -> None:
        """Remove the entries ``names`` of ``root`` that no service holds and whose zip is gone.

        The bucket is asked outside the lock (starts and stops do not wait for it); an entry held
        again meanwhile is kept. A bucket that does not answer keeps the folder for the next prune.
        """
        with self._lock:
            candidates = {name: self._keys.get(name) for name in names if name not in self._held.values()}
        gone = []
        for name, key in candidates.items():
            try:
                if key is None or not self.blobs.exists(key):
                    gone.append(name)
            except PlatformError as exc:
                log.warning("cannot tell whether bundle %s is still in the bucket: %s", key, exc)
        with self._lock:
            for name in gone:
                if name not in self._held.values():
                    self._keys.pop(name, None)
                    _remove(self.root / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
