"""The front door as a managed platform service: migrate, make sure a configurer exists, serve.

Beside the HTTP server it runs the app manager's and the AI manager's answers on the bus
(``app_manager.answers``: which apps use a model, an app's version, who owns apps;
``ai_manager.answers``: what an app names that the model registry lacks, who owns models), since
both live in this process: one consumer loop on both domains' command topics.
"""

from __future__ import annotations

from ai_manager.answers import AiManagerAnswers
from ai_manager.messages import ai_manager_topic
from app_manager.answers import AppManagerAnswers
from app_manager.messages import app_manager_topic
from platform_core.db import Database
from platform_core.http import HttpServer
from platform_core.service import Service
from platform_sdk.bus import ConsumerLoop, Requester
from web.app import build_front_door
from web.identity import ensure_first_configurer


class FrontDoorService(Service):
    """Serves the platform's HTTP API with waitress on ``web.host:web.port``."""

    name = "web"

    def on_start(self) -> None:
        settings = self.settings
        self.database = Database.from_settings(settings)
        self.own(self.database)
        self.database.ensure_schema()
        auth = settings.auth
        password = auth.admin_password.get_secret_value() if auth.admin_password else None
        generated = ensure_first_configurer(self.database, auth.admin_username, password)
        if generated:
            # Printed once, to this process's own output: nobody else ever sees it.
            print(
                f"first platform configurer {auth.admin_username!r} created; password: {generated}",
                flush=True,
            )
        self.requester = Requester(self.sdk.bus)
        self.requester.start()
        self.own(self.requester)
        # One loop answers for both domains: one consumer, not one per domain.
        bus = self.sdk.bus
        answers = ConsumerLoop(
            bus,
            [app_manager_topic(bus.topics), ai_manager_topic(bus.topics)],
            group=f"{bus.topics.prefix}.front-door-answers",
            name="front-door-answers",
        )
        AppManagerAnswers(self.database).add_to(answers)
        AiManagerAnswers(self.database).add_to(answers)
        answers.start()
        self.own(answers)
        self.server = HttpServer(
            build_front_door(settings, self.database, self.requester),
            settings.web.host,
            settings.web.port,
            threads=settings.web.threads,
        )
        self.server.start()
        self.own(self.server)
