"""The platform's own messages: heartbeats and log records.

Domain packages define their own messages next to their code; these two are
here because every managed process sends them through the SDK.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from platform_sdk.envelope import Message


class Heartbeat(Message):
    """I am alive: sent by every managed process once per interval."""

    message_type = "heartbeat"
    service_id: str = Field(description="Identity of the process (AIOT_SERVICE_ID).")
    seq: int = Field(ge=0, description="Counts up from 0 at each start of the process.")
    instance: str = Field(description="Random id of this start of the process: a restart shows a new one.")
    pid: int
    host: str
    interval_s: float = Field(gt=0, description="The sender's interval; monitors derive timeouts from it.")


class LogRecord(Message):
    """One structured log record shipped by the SDK's log handler."""

    message_type = "log.record"
    service_id: str
    time: datetime
    level: str
    logger: str
    message: str
    exception: str | None = None
    host: str = ""
    pid: int = 0
