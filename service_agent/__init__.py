"""Service agent: one per node; runs the services the node manager places there.

- ``service_agent.agent``: the agent service — command topic, node-internal HTTP (``/load``, ``/services``).
- ``service_agent.supervisor``: the table of services on this node and the thread that
  watches them (exit reports, local restarts, node announcements).
- ``service_agent.runtime``: the runtime interface and the ``process`` runtime with its venv cache.
- ``service_agent.bundles``: the node's unpacked deploy bundles, kept while a service runs in
  one or its zip is in the bucket.
- ``service_agent.load``: the psutil load sample; ``service_agent.ports``: port allocation.

It talks to Kafka (commands in, announcements and exits out) and, through its
HTTP server, to the node manager. It touches no database: what runs here is
reported, and the node manager records it.
"""
