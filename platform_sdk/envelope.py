"""The one envelope every message travels in, and how it maps onto a Kafka record.

A message is a pydantic model deriving from ``Message`` with a ``message_type``
(``"log.record"``). ``Envelope.wrap(message, source=...)`` puts it in the
envelope (type, id, time, source, payload, and for request/reply a
correlation id and a reply topic).

On the wire:

* JSON messages: the record value is the envelope as JSON; header
  ``aiot-encoding: json``.
* Binary messages (camera frames, files): the record value is the raw bytes,
  untouched; the envelope without its bytes travels as JSON in the
  ``aiot-envelope`` header; header ``aiot-encoding: binary``.

``Envelope.from_kafka(value, headers)`` reverses either form.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from platform_sdk.errors import BadRequest

ENCODING_HEADER = "aiot-encoding"
ENVELOPE_HEADER = "aiot-envelope"
KafkaHeaders = list[tuple[str, bytes]]
# What confluent-kafka hands back; values may be str or None when another client wrote them.
RecordHeaders = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None


class Message(BaseModel):
    """Base of every typed message; subclasses set ``message_type``.

    Unknown fields are ignored, not refused: a platform upgraded one service at a time
    has newer senders beside older receivers, and a field added to a message must not
    make every older receiver drop it.
    """

    model_config = ConfigDict(extra="ignore")
    message_type: ClassVar[str]


M = TypeVar("M", bound=Message)


class Envelope(BaseModel):
    """Type, id, time, source and payload of one message."""

    model_config = ConfigDict(frozen=True)

    type: str
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    correlation_id: str | None = None
    reply_to: str | None = None
    reply_partition: int | None = Field(
        default=None, description="Partition of ``reply_to`` the requester reads (a shared replies topic)."
    )
    data: bytes | None = Field(default=None, exclude=True, repr=False)

    @classmethod
    def wrap(
        cls,
        message: Message,
        *,
        source: str,
        data: bytes | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        reply_partition: int | None = None,
    ) -> Self:
        return cls(
            type=message.message_type,
            source=source,
            payload=message.model_dump(mode="json"),
            data=data,
            correlation_id=correlation_id,
            reply_to=reply_to,
            reply_partition=reply_partition,
        )

    def open(self, message_cls: builtins.type[M]) -> M:
        """The payload as ``message_cls``; a mismatch is a ``BadRequest`` naming the field."""
        if self.type != message_cls.message_type:
            raise BadRequest(f"expected a {message_cls.message_type!r} message, got {self.type!r}")
        try:
            return message_cls.model_validate(self.payload)
        except ValidationError as exc:
            raise BadRequest(
                f"malformed {self.type!r} message from {self.source!r}",
                details=exc.errors(include_url=False, include_input=False),
            ) from exc

    def to_kafka(self) -> tuple[bytes, KafkaHeaders]:
        """The record value and headers that carry this envelope."""
        if self.data is None:
            return self.model_dump_json().encode(), [(ENCODING_HEADER, b"json")]
        return self.data, [
            (ENCODING_HEADER, b"binary"),
            (ENVELOPE_HEADER, self.model_dump_json().encode()),
        ]

    @classmethod
    def from_kafka(cls, value: bytes | None, headers: RecordHeaders) -> Self:
        """Rebuild an envelope from a record; anything unreadable is a ``BadRequest``."""
        found = dict(headers or [])
        try:
            if found.get(ENCODING_HEADER) == b"binary":
                meta = cls.model_validate_json(found[ENVELOPE_HEADER] or b"")
                return meta.model_copy(update={"data": value or b""})
            return cls.model_validate_json(value or b"")
        except (ValidationError, KeyError) as exc:
            raise BadRequest(f"record is not a platform envelope: {exc}") from exc
