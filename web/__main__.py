"""``python -m web``: run the front door until SIGTERM."""

from web.service import FrontDoorService

FrontDoorService().run()
