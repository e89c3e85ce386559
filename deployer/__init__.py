"""The deployer: turns an uploaded artifact into running, checked replicas (``python -m deployer``).

It owns the ``deployments`` table and the ``bundles/`` prefix of the blob store. It
talks to the blob store (artifacts in, bundles out), the node manager (placement, over
Kafka request/reply) and the replicas themselves (``/health``, the smoke test).

Life of a deploy: ``DeployModel`` on ``<prefix>.commands.deployer`` ──▶ fetch the zip
──▶ bundle = the zip's files + ``aiot-deploy.json`` (``bundles/<sha256>.zip``) ──▶ per
replica a ``ServiceSpec`` (``python -m ai_manager.serving`` in the bundle, the model's
requirements, resources and an ``http`` port) placed by the node manager on the
least-loaded node, a different one per replica where possible ──▶ ``/health`` ──▶ the
manifest's example as a smoke test ──▶ ``deployed`` on ``<prefix>.events.deployments``.
See ``deployer/service.py``.
"""
