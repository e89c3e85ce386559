"""Deploy bundles on a node: fetched from the blob store once, unpacked, shared by the services that run them.

A ``StartService`` whose spec names a ``BundleRef`` runs in ``<home>/bundles/<node>/<sha256>``:
the first start downloads the zip, checks its hash, unpacks it through the platform's
safe archive reader (into a staging folder renamed into place, so a half-unpacked
bundle never exists) and later starts reuse the folder. Replicas of one model version
on one node therefore share one copy, and a restart fetches nothing.

A folder lives as long as a service of this node runs in it: each service holds its
bundle (``path``) until it is stopped on purpose (``release``), and the last one to let
go removes the folder. So once a model is undeployed (its deletion undeploys it) or an
app instance ends, nothing of it stays on the node; a later start fetches the bundle
again. Each node has its own folder (nodes on one machine share ``AIOT_HOME``), so one
agent never removes what another's services run in; ``sweep`` clears what a previous run
of the agent left, before it starts anything.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

from platform_core.archive import Archive
from platform_core.blobstore import BlobStore
from platform_core.nodes import BundleRef
from platform_sdk.errors import ValidationFailed


class BundleCache:
    """One node's unpacked bundles under ``root``, by hash, held by the services that run in them."""

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # service id -> the sha256 of the bundle it runs in

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
            previous = self._held.get(user)
            self._held[user] = bundle.sha256
            if previous is not None and previous != bundle.sha256:
                self._remove_unheld(previous)
        return target

    def release(self, user: str) -> None:
        """``user`` no longer runs in its bundle; the folder goes when no other service holds it."""
        with self._lock:
            sha256 = self._held.pop(user, None)
            if sha256 is not None:
                self._remove_unheld(sha256)

    def held(self) -> set[str]:
        """The hashes of the bundles some service holds."""
        with self._lock:
            return set(self._held.values())

    def sweep(self) -> None:
        """Remove every folder no service holds (what a previous run of this node left)."""
        with self._lock:
            if not self.root.is_dir():
                return
            for entry in self.root.iterdir():
                if entry.name not in self._held.values():
                    _remove(entry)

    def _remove_unheld(self, sha256: str) -> None:
        if sha256 not in self._held.values():
            _remove(self.root / sha256)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
