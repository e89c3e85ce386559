"""The message envelope: round trips through Kafka records, JSON and binary."""

from __future__ import annotations

import pytest

from platform_sdk.envelope import ENCODING_HEADER, Envelope, Message
from platform_sdk.errors import BadRequest


class Reading(Message):
    message_type = "test.reading"
    sensor: str
    value: float


class Frame(Message):
    message_type = "test.frame"
    width: int
    height: int
    content_type: str


def test_json_envelope_round_trips_through_a_record() -> None:
    sent = Envelope.wrap(Reading(sensor="t1", value=21.5), source="sim-1")
    value, headers = sent.to_kafka()
    received = Envelope.from_kafka(value, headers)
    assert received == sent
    assert received.open(Reading) == Reading(sensor="t1", value=21.5)
    assert (ENCODING_HEADER, b"json") in headers


def test_binary_payload_travels_as_raw_bytes_with_metadata_in_headers() -> None:
    frame = bytes(range(256)) * 100
    sent = Envelope.wrap(Frame(width=64, height=48, content_type="image/jpeg"), source="cam-1", data=frame)
    value, headers = sent.to_kafka()
    assert value == frame  # untouched: no base64, no JSON around it
    received = Envelope.from_kafka(value, headers)
    assert received.data == frame
    assert received.open(Frame).content_type == "image/jpeg"
    assert received.id == sent.id
    assert received.time == sent.time
    assert received.source == "cam-1"


def test_empty_binary_payload_stays_binary() -> None:
    sent = Envelope.wrap(Frame(width=0, height=0, content_type="image/jpeg"), source="cam", data=b"")
    received = Envelope.from_kafka(*sent.to_kafka())
    assert received.data == b""


def test_request_fields_survive() -> None:
    sent = Envelope.wrap(Reading(sensor="a", value=1), source="x", correlation_id="c1", reply_to="replies.x")
    received = Envelope.from_kafka(*sent.to_kafka())
    assert (received.correlation_id, received.reply_to) == ("c1", "replies.x")


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"not json", None),
        (b'{"no": "type"}', [(ENCODING_HEADER, b"json")]),
        (b"\x00raw", [(ENCODING_HEADER, b"binary")]),  # binary without its envelope header
        (None, None),
    ],
)
def test_unreadable_records_are_bad_requests(
    value: bytes | None, headers: list[tuple[str, bytes]] | None
) -> None:
    with pytest.raises(BadRequest, match="not a platform envelope"):
        Envelope.from_kafka(value, headers)


def test_opening_as_the_wrong_type_or_with_bad_fields_names_the_problem() -> None:
    envelope = Envelope.wrap(Reading(sensor="t", value=1), source="s")
    with pytest.raises(BadRequest, match=r"expected a 'test.frame' message"):
        envelope.open(Frame)
    broken = Envelope(type="test.reading", source="s", payload={"sensor": "t", "value": "warm"})
    with pytest.raises(BadRequest, match=r"malformed 'test.reading'") as caught:
        broken.open(Reading)
    assert caught.value.details[0]["loc"] == ("value",)
