"""Face detector: OpenCV's bundled Haar cascade for frontal faces (no training, no shipped weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from platform_sdk.model import Model

CASCADE = "haarcascade_frontalface_default.xml"
# Tuned on scikit-image's samples: one face in astronaut(), none in coffee(), camera() or rocket().
SCALE_FACTOR = 1.2
MIN_NEIGHBORS = 5
MIN_SIZE = (30, 30)
# The cascade runs on a copy whose longer side is at most this many pixels (boxes are scaled back):
# a 640x480 camera frame costs 15 ms instead of 56 ms, and finds the same faces (a face must be
# at least MIN_SIZE there, 60 px in such a frame).
WORKING_SIDE = 320


class FaceDetector(Model):
    """Serves ``detect``: a grayscale image (``decode_image_gray``) in, face count and boxes out."""

    def __init__(self) -> None:
        self.cascade = cv2.CascadeClassifier()

    def load(self, model_dir: Path) -> None:
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)  # type: ignore[attr-defined]
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV could not load {CASCADE}")

    def detect(self, image: npt.NDArray[np.uint8]) -> dict[str, Any]:
        # A colour image, should the endpoint use decode_image instead.
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        rows, cols = gray.shape[:2]
        scale = min(1.0, WORKING_SIDE / max(rows, cols))
        if scale < 1.0:
            size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        faces = self.cascade.detectMultiScale(
            gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=MIN_SIZE
        )
        boxes = [[round(int(value) / scale) for value in box] for box in faces]
        return {"count": len(boxes), "boxes": boxes}
