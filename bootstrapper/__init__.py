"""Bootstrapper: brings a platform up on nodes, and takes it down.

- ``bootstrapper.kafka``: Apache Kafka (KRaft) from Maven Central's jars, the broker ``aiot up``
  starts; ``bootstrapper.broker``: the embedded Tansu fallback used without Java 17+.
- ``bootstrapper.providers``: the provider interface (hosts, their SSH addresses).
- ``bootstrapper.local``: the ``local`` provider behind ``aiot up``/``aiot down``:
  on this machine it starts the broker (if none is configured), prepares the
  registry database and the first platform configurer, starts the platform's
  services as processes of their own, waits until each answers (heartbeat,
  HTTP health), and records everything under ``AIOT_HOME/run`` so that
  ``aiot down`` stops exactly what this home started.
- ``bootstrapper.ssh``: the ``ssh`` provider (hosts from an inventory file);
  ``bootstrapper.remote``: the bootstrap over SSH behind ``aiot bootstrap``, ``aiot nodes`` and
  ``aiot destroy`` (a pinned release installed offline on each host, its settings, and the
  platform started there by ``python -m bootstrapper.host`` with the local provider's machinery:
  the main host's broker, registry and core services, the other hosts' agents);
  ``bootstrapper.spares``: the node manager's scale-out over SSH on such a main host (an
  inventory's spare hosts bootstrapped when every host is busy, stopped again when idle);
  ``bootstrapper.cluster``: a Kafka cluster across such hosts, one broker on each host the
  inventory's ``brokers`` names.

It talks to the processes it starts (signals), the broker (metadata, heartbeat
topic), the front door (health) and, over SSH, to the hosts it installs.
"""
