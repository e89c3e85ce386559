"""platform_core: server-side code shared by the platform's own services (never by user apps).

- ``service``: the ``Service`` base (start/stop, owned parts, signal handling).
- ``db``: registry database engine, sessions, declarative base, Alembic migrations.
- ``blobstore``: the file bucket (local directory or Azure Blob).
- ``auth``: roles and the one guard every HTTP route declares a rule for.
- ``http``: the Flask app factory and the waitress server.
"""
