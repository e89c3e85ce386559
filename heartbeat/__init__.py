"""Heartbeat monitor: keeps every managed process alive.

- ``heartbeat.monitor``: ``HeartbeatMonitor`` — last-seen of every service id, exit
  reports from agents, restarts through the node's agent or a new placement through
  the node manager, crash-loop back-off.
- ``heartbeat.models``: the incidents table.

It talks to Kafka (heartbeats and node events in; requests to the node manager and
agents out) and owns the ``incidents`` table.
"""
