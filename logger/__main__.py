"""``python -m logger``: run the logger service until SIGTERM."""

from logger.service import LoggerService

LoggerService().run()
