"""scikit-image's bundled sample photos (no network), as the tests of models use them."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from skimage import data


def sample_image(name: str) -> np.ndarray[Any, Any]:
    """One of scikit-image's sample images as it ships (RGB or grayscale)."""
    image: np.ndarray[Any, Any] = getattr(data, name)()  # skimage is untyped
    return image


def sample_png(name: str) -> bytes:
    """A sample image as PNG bytes, colour ones converted to OpenCV's BGR first."""
    image = sample_image(name)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return bytes(encoded.tobytes())
