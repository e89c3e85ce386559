"""platform_sdk: the slim library every managed process imports.

Apps, models, simulators and the platform's own services use it to reach the
platform: settings (``get_settings``), the Kafka bus (``Bus``, ``Producer``,
the one ``ConsumerLoop``, ``Requester`` for request/reply), the message
envelope, heartbeats and log shipping (``PlatformRuntime``, ``get_logger``)
the error tree rooted at ``PlatformError``, and ``model_call`` / ``Model`` for
models (call a deployed model; write one the platform can serve), and
``DeviceClient`` for an app's sensors and controllers, ``App``: what a
smart app's entrypoint is called with (its devices and models by alias), and
``StatusPage``: a web app's status page (``app.serve(page.wsgi)``).

It never imports Flask, SQLAlchemy, docker or Azure, so a user's app stays
light (a test enforces this), and it starts nothing at import: threads exist
only after an explicit ``start()``, ``get_logger()`` or a first ``model_call``
(whose reply consumer is a daemon thread, so a script still exits when done).
"""

from platform_sdk.app import App
from platform_sdk.bus import Bus, ConsumerLoop, ErrorReply, Producer, Requester
from platform_sdk.device_documents import Binding
from platform_sdk.devices import DeviceClient, SensorData
from platform_sdk.envelope import Envelope, Message
from platform_sdk.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PlatformError,
    Timeout,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from platform_sdk.heartbeat import HeartbeatClient
from platform_sdk.log import KafkaLogHandler, get_logger
from platform_sdk.messages import Heartbeat, LogRecord
from platform_sdk.model import Model
from platform_sdk.model_client import ModelClient, model_call
from platform_sdk.runtime import PlatformRuntime
from platform_sdk.settings import Settings, get_settings, temporary_settings
from platform_sdk.status_page import StatusPage
from platform_sdk.topics import Topics

__all__ = [
    "App",
    "BadRequest",
    "Binding",
    "Bus",
    "Conflict",
    "ConsumerLoop",
    "DeviceClient",
    "Envelope",
    "ErrorReply",
    "Forbidden",
    "Heartbeat",
    "HeartbeatClient",
    "KafkaLogHandler",
    "LogRecord",
    "Message",
    "Model",
    "ModelClient",
    "NotFound",
    "PayloadTooLarge",
    "PlatformError",
    "PlatformRuntime",
    "Producer",
    "Requester",
    "SensorData",
    "Settings",
    "StatusPage",
    "Timeout",
    "Topics",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "get_logger",
    "get_settings",
    "model_call",
    "temporary_settings",
]
