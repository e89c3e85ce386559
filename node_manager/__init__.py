"""Node manager: which nodes exist, how loaded they are, and which service runs where.

- ``node_manager.service``: the service — announcements (with each node's load) in, placement
  requests answered, node health, roster reconciliation, re-placement, scale-out.
- ``node_manager.placement``: the least-loaded score and choice (pure functions).
- ``node_manager.registry`` / ``node_manager.models``: the ``nodes`` and ``placements`` tables.
- the service roster (``configs/roster.toml``) is read by ``platform_core.roster``, which the
  provider that brings a platform up reads too.

Scale-out and the retirement of lost nodes are the provider's: whoever starts the node
manager hands it those hooks (``bootstrapper.local_node_manager`` for `aiot up`); ``python -m
node_manager`` runs it without.

It talks to Kafka only (agents' announcements and exits in; StartService/StopService out). It
owns the ``nodes`` and ``placements`` tables.
"""
