"""Deploy bundles on a node: fetched from the blob store once, unpacked, shared by the services that run them.

A ``StartService`` whose spec names a ``BundleRef`` runs in ``<home>/bundles/<sha256>``:
the first start downloads the zip, checks its hash, unpacks it through the platform's
safe archive reader (into a staging folder renamed into place, so a half-unpacked
bundle never exists) and later starts reuse the folder. Replicas of one model version
on one node therefore share one copy, and a restart fetches nothing.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from platform_core.archive import Archive
from platform_core.blobstore import BlobStore
from platform_core.nodes import BundleRef
from platform_sdk.errors import ValidationFailed


class BundleCache:
    """Unpacked bundles under ``root``, keyed by their hash."""

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs
        self._lock = threading.Lock()

    def path(self, bundle: BundleRef) -> Path:
        """The unpacked bundle, fetched and unpacked first if this node has not got it."""
        target = self.root / bundle.sha256
        with self._lock:
            if target.is_dir():
                return target
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
        return target
