"""Images ↔ bytes ↔ numpy arrays, with OpenCV: what camera frames and image inputs are made of.

* ``encode_image(array)``: a BGR (``HxWx3``) or grayscale (``HxW``) ``uint8`` array to JPEG
  (the default) or PNG bytes;
* ``decode_image(data)``: JPEG or PNG bytes to a BGR array (``gray=True``: grayscale);
* ``content_type_of(data)``: ``image/jpeg`` or ``image/png`` from the bytes' magic number.

The bytes carry no separate type: the content type travels beside them, in the ``Frame``
message of a camera (``platform_sdk.device_messages``) or an HTTP ``Content-Type`` header.
OpenCV is imported by the functions that need it, never by importing this module, so the
SDK stays light for code that moves images without looking at them.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt

from platform_sdk.errors import ValidationFailed

JPEG = "image/jpeg"
PNG = "image/png"
CONTENT_TYPES = (JPEG, PNG)
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_COMPRESSION = 3  # zlib level: a fair trade of size and speed for frames


def content_type_of(data: bytes) -> str | None:
    """``image/jpeg`` or ``image/png`` when ``data`` starts like one, else None."""
    head = bytes(data[:8])
    if head.startswith(_JPEG_MAGIC):
        return JPEG
    if head.startswith(_PNG_MAGIC):
        return PNG
    return None


def _check_array(array: Any) -> npt.NDArray[np.uint8]:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"an image must be a numpy array, not {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must have dtype uint8, not {array.dtype}")
    channels_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))
    if not channels_ok:
        raise ValueError(
            f"an image array must be HxW (grayscale) or HxWx3 (BGR), not shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"an image array must not be empty (shape {tuple(array.shape)})")
    checked: npt.NDArray[np.uint8] = array
    return checked


def encode_image(array: npt.NDArray[np.uint8], content_type: str = JPEG, quality: int = 85) -> bytes:
    """Encode a BGR or grayscale ``uint8`` array as JPEG (``quality`` 1-100) or lossless PNG.

    Raises ``ValueError`` naming the problem: not an array, a dtype other than uint8, a
    shape other than HxW or HxWx3, an unsupported content type or quality.
    """
    image = _check_array(array)
    import cv2

    if content_type == JPEG:
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1-100, not {quality}")
        extension, flags = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif content_type == PNG:
        extension, flags = ".png", [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION]
    else:
        raise ValueError(f"content type must be {' or '.join(CONTENT_TYPES)}, not {content_type!r}")
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(image), flags)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {tuple(image.shape)} array as {content_type}")
    return bytes(encoded.tobytes())


def decode_image(data: bytes, *, gray: bool = False) -> npt.NDArray[np.uint8]:
    """Decode JPEG or PNG bytes to a BGR ``uint8`` array (HxWx3), or HxW with ``gray``.

    Raises ``ValidationFailed`` ("not a JPEG or PNG image") for anything else, truncated
    or corrupt images included.
    """
    if content_type_of(data) is None:
        raise ValidationFailed(
            "not a JPEG or PNG image", details=[{"field": "image", "reason": "not a JPEG or PNG image"}]
        )
    import cv2

    flags = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        array = None
    if array is None:
        raise ValidationFailed(
            "not a JPEG or PNG image",
            details=[{"field": "image", "reason": f"{content_type_of(data)} data that does not decode"}],
        )
    return cast(npt.NDArray[np.uint8], array)  # without IMREAD_ANYDEPTH, always 8-bit
