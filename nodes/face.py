"""Face tracking. Exports: Face (the per-face record every face node reads).

The ``face`` node (mediapipe face mesh) is defined here; ``reenact`` and ``faceswap`` consume its
``faces`` output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    """One tracked face, in pixels of the frame it was found in. Fields may be added, never removed.

    landmarks:   (478, 3) float32, mediapipe face-mesh order (468 mesh points + 10 iris points);
                 x, y in pixels; z in pixels at the same scale as x (negative = towards the camera).
    box:         (x0, y0, x1, y1) pixels, the landmarks' bounding box.
    rotation:    (3, 3) float32 head rotation (identity = facing the camera), from a 3D fit.
    translation: (3,) float32 head position: x, y of the head centre in pixels, z relative depth.
    yaw, pitch, roll: degrees derived from ``rotation`` (yaw > 0: the person turns to their left
                 (image right); pitch > 0: looks up; roll > 0: head tilts clockwise in the image).
    scale:       face size in pixels (fit scale: about the distance between the outer eye corners).
    expression:  signals in roughly [0, 1]: eye_open_left, eye_open_right (lid gap / eye width),
                 mouth_open (inner-lip gap / mouth width), mouth_width (mouth width / face width),
                 brow_left, brow_right (brow height / face height), gaze_x, gaze_y (iris offset, -1..1).
    confidence:  0..1.
    track_id:    stable id of the same person across frames.
    state:       'tracked' (seen this frame), 'held' (briefly lost, last pose kept), 'easing'
                 (lost for longer: consumers ease towards neutral by ``neutral_weight``).
    neutral_weight: 0 (use this pose) .. 1 (fully neutral), for 'easing'.
    """

    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3, dtype=np.float32))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 0.0
    expression: dict[str, float] = field(default_factory=dict)
    confidence: float = 1.0
    track_id: int = 0
    state: str = "tracked"
    neutral_weight: float = 0.0

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])
