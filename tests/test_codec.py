"""platform_sdk.codec: images to bytes and back, content-type sniffing, and refusals that name the problem."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import cv2
import numpy as np
import pytest

from platform_sdk.codec import content_type_of, decode_image, encode_image
from platform_sdk.errors import ValidationFailed
from tests.sample_images import sample_image


def astronaut_bgr() -> np.ndarray[Any, Any]:
    image: np.ndarray[Any, Any] = cv2.cvtColor(sample_image("astronaut"), cv2.COLOR_RGB2BGR)
    return image


def test_png_round_trip_is_exact() -> None:
    image = astronaut_bgr()
    data = encode_image(image, "image/png")
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8
    assert decoded.shape == image.shape
    assert np.array_equal(decoded, image)


def test_jpeg_round_trip_is_close() -> None:
    image = astronaut_bgr()
    data = encode_image(image)  # JPEG by default
    assert len(data) < image.nbytes / 4
    decoded = decode_image(data)
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(np.int16) - image.astype(np.int16)).mean() < 3


def test_jpeg_quality_trades_size_for_fidelity() -> None:
    image = astronaut_bgr()
    low, high = encode_image(image, quality=20), encode_image(image, quality=95)
    assert len(low) < len(high)

    def error(data: bytes) -> float:
        return float(np.abs(decode_image(data).astype(np.int16) - image.astype(np.int16)).mean())

    assert error(high) < error(low)


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg"])
def test_grayscale_round_trip(content_type: str) -> None:
    gray = sample_image("camera")  # 512x512 uint8 grayscale
    assert gray.ndim == 2
    decoded = decode_image(encode_image(gray, content_type), gray=True)
    assert decoded.shape == gray.shape
    difference = np.abs(decoded.astype(np.int16) - gray.astype(np.int16)).mean()
    assert difference == 0 if content_type == "image/png" else difference < 3


def test_colour_decodes_to_gray_and_gray_to_colour() -> None:
    image = astronaut_bgr()
    gray = decode_image(encode_image(image, "image/png"), gray=True)
    assert gray.shape == image.shape[:2]
    colour = decode_image(encode_image(gray, "image/png"))
    assert colour.shape == (*gray.shape, 3)
    assert np.array_equal(colour[:, :, 0], gray)


def test_single_channel_arrays_are_grayscale() -> None:
    gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64, 1).astype(np.uint8)
    assert np.array_equal(decode_image(encode_image(gray, "image/png"), gray=True), gray[:, :, 0])


def test_content_type_sniffing() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    assert content_type_of(encode_image(image)) == "image/jpeg"
    assert content_type_of(encode_image(image, "image/png")) == "image/png"
    assert content_type_of(b"GIF89a......") is None
    assert content_type_of(b"") is None
    assert content_type_of(b"\xff\xd8") is None


@pytest.mark.parametrize(
    "junk",
    [b"", b"hello, world", b"GIF89a\x01\x00\x01\x00", b"\xff\xd8\xff\xe0 truncated", b"\x89PNG\r\n\x1a\n"],
)
def test_junk_is_rejected(junk: bytes) -> None:
    with pytest.raises(ValidationFailed, match="not a JPEG or PNG image") as caught:
        decode_image(junk)
    assert caught.value.status == 422
    assert caught.value.details[0]["field"] == "image"


def test_truncated_image_is_rejected() -> None:
    data = encode_image(astronaut_bgr(), "image/png")
    with pytest.raises(ValidationFailed, match="not a JPEG or PNG image"):
        decode_image(data[: len(data) // 10])


@pytest.mark.parametrize(
    ("array", "content_type", "problem"),
    [
        (np.zeros((8, 8, 3), np.float32), "image/jpeg", "dtype uint8, not float32"),
        (np.zeros((8, 8, 3), np.uint16), "image/png", "dtype uint8, not uint16"),
        (np.zeros((8, 8, 4), np.uint8), "image/png", r"not shape \(8, 8, 4\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), "image/jpeg", r"not shape \(2, 8, 8, 3\)"),
        (np.zeros(8, np.uint8), "image/jpeg", r"not shape \(8,\)"),
        (np.zeros((0, 8), np.uint8), "image/jpeg", "must not be empty"),
        (np.zeros((8, 8), np.uint8), "image/gif", "not 'image/gif'"),
        ([[0, 1], [2, 3]], "image/png", "numpy array, not list"),
    ],
)
def test_bad_arrays_and_content_types_are_refused(array: Any, content_type: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_image(array, content_type)


def test_bad_quality_is_refused() -> None:
    with pytest.raises(ValueError, match="quality must be 1-100, not 0"):
        encode_image(np.zeros((8, 8), np.uint8), quality=0)


def test_importing_the_codec_does_not_import_opencv() -> None:
    probe = "import sys, platform_sdk.codec; print('cv2' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
