"""``python -m bootstrapper.local_node_manager``: the node manager of a platform `aiot up` started.

The local provider (``bootstrapper.local``) starts the node manager on the main node's agent
with this module, which hands it the provider's hooks: ``add_node`` (scale-out: one more
service agent on this machine), ``retire_node`` (what still runs of a lost node here is
ended), ``added_nodes`` and ``remove_node`` (scale-in: a drained node's agent stopped and
forgotten). The node manager knows nothing of providers; whoever starts it injects one
(``python -m node_manager`` runs it without).

On a main host ``aiot bootstrap`` handed spare hosts (``bootstrapper.spares``), the hooks are the
spares' instead: scale-out bootstraps the next spare over SSH, scale-in stops it there.
"""

from __future__ import annotations

from bootstrapper.local import LocalPlatform
from bootstrapper.spares import SpareScaleOut
from node_manager.service import NodeManagerService
from platform_sdk.settings import get_settings


def main() -> None:
    settings = get_settings()
    spares = SpareScaleOut.of(settings)
    if spares is not None:
        NodeManagerService(
            settings,
            scale_out=spares.add_node,
            remove_node=spares.remove_node,
            added_nodes=spares.added_nodes,
        ).run()
        return
    provider = LocalPlatform(settings)
    NodeManagerService(
        settings,
        scale_out=provider.add_node,
        retire_node=provider.retire_node,
        remove_node=provider.remove_node,
        added_nodes=provider.added_nodes,
    ).run()


if __name__ == "__main__":
    main()
