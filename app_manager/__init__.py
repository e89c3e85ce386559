"""The app manager: the app registry, app artifact validation, and the routes that manage apps.

It owns the ``apps`` and ``app_versions`` tables and the ``apps/`` prefix of the blob
store. It reads the AI manager's model registry (every model an app names, its versions
and their endpoints) and the device manager's registry (device types; the locations with
enough devices of every type an app needs); it sends no commands (an app runs when an end
user schedules it) and answers one question over Kafka: which apps use a model (the AI
manager asks before it deletes one). Its parts:

* ``artifact`` validates an app zip (safe archive, ``app.json``, entrypoint, requirements);
  ``aiot app pack`` runs the same checks on the developer's machine. On upload
  ``reference_problems`` also checks ``app.json`` against the registry;
* ``registry`` — CRUD on the tables; ``api`` — the HTTP routes the front door mounts
  (upload, list, show, delete);
* ``messages`` — what it is asked on ``<prefix>.commands.app-manager``; ``answers`` — the
  consumer that answers it, run by the front door's process beside the routes.

Life of an upload: ``POST /api/apps`` (zip) ──▶ artifact validation ──▶ models, versions,
endpoints and device types checked against the registry (422 naming file, field and reason;
nothing stored) ──▶ rows ──▶ blob ``apps/<id>/<version>.zip`` (the rows are removed again
if it cannot be written) ──▶ 201 with the app id.
"""
