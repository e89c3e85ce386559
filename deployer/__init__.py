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

Apps (``deployer/apps.py``, table ``app_instances``): ``DeployApp`` from the scheduler ──▶
the device manager binds the app's device aliases at the location ──▶ model aliases checked
deployed ──▶ ``python -m platform_sdk.run_app`` in the app's zip, placed on the least-loaded node
──▶ its health path ──▶ ``running`` with its address on ``<prefix>.events.app-instances``
(the scheduler mails the end user); ``StopInstance`` at the window's end.
"""
