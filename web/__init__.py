"""The front door: the platform's one HTTP server, with authentication and role rules.

``web.app.build_front_door`` mounts every domain package's blueprint (identity
here; logs from ``logger.api``; later issues add models, apps, devices,
schedules) behind the guard of ``platform_core.auth``. ``web.service`` runs it
with waitress as a managed platform service. Identity (users, roles,
passwords, API tokens) is owned here, in ``web.identity``; other services
learn who calls them only through the guard's ``Principal``.
"""
