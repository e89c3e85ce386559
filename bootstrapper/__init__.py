"""Bootstrapper: brings a platform up on nodes, and takes it down.

- ``bootstrapper.broker``: the embedded Kafka-protocol broker (Tansu) used when
  no Kafka cluster is configured.
- ``bootstrapper.local``: the ``local`` provider behind ``aiot up``/``aiot down``:
  on this machine it starts the broker (if none is configured), prepares the
  registry database and the first platform configurer, starts the platform's
  services as processes of their own, waits until each answers (heartbeat,
  HTTP health), and records everything under ``AIOT_HOME/run`` so that
  ``aiot down`` stops exactly what this home started.

It talks to the processes it starts (signals), the broker (metadata, heartbeat
topic) and the front door (health). Remote providers (ssh, azure) come with
the node layer.
"""
