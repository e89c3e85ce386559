"""The app manager: the app registry, app artifact validation, and the routes that manage apps.

It owns the ``apps`` and ``app_versions`` tables and the ``apps/`` prefix of the blob
store. It reads no other domain's tables: it asks the AI manager over Kafka what it lacks of
the models an app names (``CheckModelUses``) and the device manager which device types
exist and which locations have enough devices of every type an app needs
(``CheckDeviceTypes``, ``FindLocations``); it sends no commands (an app runs when an end user
schedules it) and answers two questions over Kafka: which apps use a model (the AI manager
asks before it deletes one) and which version of an app to run (``PickAppVersion``, the
scheduler asks). Its parts:

* ``artifact`` validates an app zip (safe archive, ``app.json``, entrypoint, requirements);
  ``aiot app pack`` runs the same checks on the developer's machine. On upload
  ``references`` also checks ``app.json`` against the model and device registries (asking);
* ``registry`` — CRUD on the tables; ``api`` — the HTTP routes the front door mounts
  (upload, list, show, delete);
* ``messages`` — what it is asked on ``<prefix>.commands.app-manager``; ``answers`` — the
  consumer that answers it, run by the front door's process beside the routes.

Life of an upload: ``POST /api/apps`` (zip) ──▶ artifact validation ──▶ models, versions,
endpoints and device types checked by their owners over Kafka (422 naming file, field and
reason; nothing stored; 503 when one does not answer) ──▶ rows ──▶ blob
``apps/<id>/<version>.zip`` (the rows are removed again if it cannot be written) ──▶ 201 with
the app id.
"""
