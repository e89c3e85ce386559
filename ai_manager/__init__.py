"""The AI manager: the model registry, model artifact validation, and the REST wrapper that serves a model.

It owns the ``models`` and ``model_versions`` tables and the ``models/`` prefix
of the blob store, and talks to the deployer over Kafka. Its parts:

* ``artifact`` validates a model zip (safe archive, manifest, entrypoint, requirements);
  ``aiot model pack`` runs the same checks on the developer's machine;
* ``registry`` — CRUD on the tables; ``api`` — the HTTP routes the front door mounts
  (upload, list, show, delete), which store the zip, register the version and send
  ``DeployModel`` to the deployer; a delete asks the app manager over Kafka which apps
  use the model (409 naming them, unless forced);
* ``messages`` — what it is asked on ``<prefix>.commands.ai-manager``; ``answers`` — the
  consumer that answers it (which models, versions and endpoints an app names it lacks), run
  by the front door's process beside the routes;
* ``serving`` — ``python -m ai_manager.serving``: one model replica over HTTP, started
  by the deployer through a node's agent.

Life of an upload: ``POST /api/models`` (zip) ──▶ artifact validation (422 naming file,
field and reason; nothing stored) ──▶ blob ``models/<id>/<version>.zip`` ──▶ rows ──▶
``DeployModel`` on ``<prefix>.commands.deployer`` ──▶ 201 with the model id.
"""
