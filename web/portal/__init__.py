"""The portal: server-rendered pages of the front door for the four roles, signed in with a session cookie.

``web.app.build_front_door`` mounts ``blueprint`` beside the ``/api`` blueprints. ``core`` owns the
session cookie, the CSRF tokens, the in-process calls to the API and rendering; the page modules
(``account``, ``configurer``, ``developer``, ``end_user``) add their routes to the blueprint, each
with its role rule, so the navigation (built from those rules) shows only what a role may open.
Templates are in ``templates/``, the CSS and the small polling script in ``static/`` (no CDN, no
build step). See docs/architecture.md, "Portal".
"""

from __future__ import annotations

from web.portal import account, configurer, developer, end_user
from web.portal.core import blueprint

__all__ = ["account", "blueprint", "configurer", "developer", "end_user"]
