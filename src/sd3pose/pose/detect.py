"""Photo -> keypoints of every clearly visible person, with MediaPipe's bundled models on CPU.

MediaPipe's legacy Holistic graph (pose, face mesh, both hands; hands and face are found on
crops around the pose's wrists and face) follows one person. To find everybody:
1. run the BlazePose person detector alone (a small graph of our own around MediaPipe's
   registered `PoseDetectionCpu` subgraph) on the photo, and on square windows of a wide or tall
   photo; hide each face it finds and run it again, until it finds nobody new (it tends to report
   only the most prominent person per pass);
2. for each person, run Holistic on a crop around them with the other people's faces hidden, so
   the only face it can lock on to is theirs, and keep the result only if it lands on that person
   (if not, retry once with everybody already found hidden).
Holistic's face/hand tracking between calls is switched off, so a photo always gives the same
keypoints. All models come from the mediapipe wheel; nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sd3pose.errors import ModelLoadError
from sd3pose.pose.keypoints import Person, Pose
from sd3pose.pose.mediapipe_map import person_from_mediapipe

log = logging.getLogger(__name__)

# Photos are detected at most this large (longest side): enough for faces and hands, cheaper to copy.
DETECT_MAX_SIDE = 1024
MIN_PERSON_SCORE = 0.5
MAX_PEOPLE = 8
# Crop around a person: the detector's full-body circle (hip centre, radius to its scale point) times this.
CROP_SCALE = 1.5
# Faces are hidden by black squares this many times the detected face box.
HIDE_FACE_SCALE_SEARCH = 1.6
HIDE_FACE_SCALE_CROP = 1.2
# Images longer than this many times their short side are also searched in square windows.
WINDOW_ASPECT = 1.3
# At most this many windows per pass: each costs a detector run under the shared lock, so a tiny
# 1024x1 PNG must not buy thousands of them.
MAX_WINDOWS = 8
# A working image with a shorter side than this holds nobody the detector could find.
MIN_DETECT_SIDE = 32

_PERSON_DETECTOR_GRAPH = """
input_stream: "image"
output_stream: "detections"
node {
  calculator: "PoseDetectionCpu"
  input_stream: "IMAGE:image"
  output_stream: "DETECTIONS:detections"
}
"""


@dataclass(frozen=True)
class _Found:
    """One person detection in pixels of the working image."""

    score: float
    face: tuple[float, float, float, float]  # x0, y0, x1, y1
    hip: tuple[float, float]
    scale_point: tuple[float, float]
    window: tuple[int, int, int, int]  # the part of the image the detector saw it in

    def face_square(self, factor: float) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.face
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * factor / 2
        return math.floor(cx - half), math.floor(cy - half), math.ceil(cx + half), math.ceil(cy + half)

    def contains_face_point(self, x: float, y: float, factor: float = 2.0) -> bool:
        x0, y0, x1, y1 = self.face_square(factor)
        return x0 <= x <= x1 and y0 <= y <= y1

    def head_in_window(self) -> bool:
        x0, y0, x1, y1 = self.face_square(2.0)
        wx0, wy0, wx1, wy1 = self.window
        return x0 >= wx0 and y0 >= wy0 and x1 <= wx1 and y1 <= wy1

    def window_area(self) -> int:
        return (self.window[2] - self.window[0]) * (self.window[3] - self.window[1])

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        radius = math.dist(self.hip, self.scale_point) * CROP_SCALE
        # Never smaller than a few face sizes: the radius is tiny when the detector is unsure of the body.
        x0, y0, x1, y1 = self.face
        radius = max(radius, 3 * max(x1 - x0, y1 - y0))
        cx, cy = self.hip
        # Within the window it was found in: Holistic re-detects the person there as reliably.
        wx0, wy0, wx1, wy1 = self.window
        return (
            max(wx0, math.floor(cx - radius)),
            max(wy0, math.floor(cy - radius)),
            min(wx1, math.ceil(cx + radius)),
            min(wy1, math.ceil(cy + radius)),
        )


def _static_holistic() -> object:
    """MediaPipe Holistic for unrelated photos: the same photo always gives the same keypoints.

    Even in static_image_mode, Holistic's face and hand stages reuse the previous call's landmarks
    as their crop when they are close to the new one (tracking), so results would drift with call
    history. We expand the graph and give its RoiTrackingCalculators requirements no crop can meet;
    resetting the graph instead would reload every model on each call.
    """
    import os

    # MediaPipe's C++ logging (glog/absl) floods stderr with per-graph warnings; keep errors only.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import mediapipe as mp
    from mediapipe.framework import calculator_pb2
    from mediapipe.modules.holistic_landmark.calculators import roi_tracking_calculator_pb2
    from mediapipe.python._framework_bindings import validated_graph_config
    from mediapipe.python.solution_base import SolutionBase

    path = os.path.join(os.path.dirname(mp.__file__), "modules/holistic_landmark/holistic_landmark_cpu.binarypb")
    validated = validated_graph_config.ValidatedGraphConfig()
    validated.initialize(binary_graph_path=path)
    graph = calculator_pb2.CalculatorGraphConfig()
    graph.ParseFromString(validated.binary_config)
    untracked = 0
    for node in graph.node:
        if node.calculator == "RoiTrackingCalculator":
            options = node.options.Extensions[roi_tracking_calculator_pb2.RoiTrackingCalculatorOptions.ext]
            options.rect_requirements.rotation_degrees = -1.0
            options.rect_requirements.translation = -1.0
            options.rect_requirements.scale = -1.0
            untracked += 1
    if untracked != 3:  # face, left hand, right hand
        raise RuntimeError(f"unexpected Holistic graph layout ({untracked} tracking nodes instead of 3)")
    return SolutionBase(
        graph_config=graph,
        side_inputs={
            # model_complexity=1 is the only pose landmark model the wheel bundles (0 and 2 would download).
            "model_complexity": 1,
            "smooth_landmarks": False,
            "enable_segmentation": False,
            "smooth_segmentation": False,
            "refine_face_landmarks": False,
            "use_prev_landmarks": False,
        },
        calculator_params={
            "poselandmarkcpu__posedetectioncpu__TensorsToDetectionsCalculator.min_score_thresh": MIN_PERSON_SCORE,
        },
        outputs=["pose_landmarks", "left_hand_landmarks", "right_hand_landmarks", "face_landmarks"],
    )


def _windows(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The whole image, plus overlapping windows along the long side of a wide or tall image.

    The detector letterboxes its input to a small square, so in a wide image each person gets few
    pixels; squares the size of the short side (half overlapping) give them the full resolution.
    Very long images get MAX_WINDOWS longer windows instead, still half overlapping.
    """
    whole = (0, 0, width, height)
    side, long_side = min(width, height), max(width, height)
    if long_side <= WINDOW_ASPECT * side:
        return [whole]
    count = min(MAX_WINDOWS, math.ceil((long_side - side) / (side / 2)) + 1)
    # Without the cap this is the short side; with it, long enough for the windows to still cover everything.
    length = min(long_side, max(side, math.ceil(2 * long_side / (count + 1))))
    windows = []
    for i in range(count):
        start = round(i * (long_side - length) / (count - 1))
        windows.append((start, 0, start + length, height) if width > height else (0, start, width, start + length))
    return [whole, *windows]


def _extent(person: Person, margin: float = 0.1) -> tuple[int, int, int, int]:
    """The box around all of a person's present keypoints, grown by `margin` of its size."""
    points = np.concatenate([p for p in person.parts().values() if p is not None])
    points = points[points[:, 2] > 0, :2]
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    grow_x, grow_y = (x1 - x0) * margin, (y1 - y0) * margin
    return (
        math.floor(x0 - grow_x),
        math.floor(y0 - grow_y),
        math.ceil(x1 + grow_x),
        math.ceil(y1 + grow_y),
    )


def _hide(image: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    image[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 0


def _landmarks(result: object, name: str, with_visibility: bool = False) -> np.ndarray | None:
    landmarks = getattr(result, name)
    if landmarks is None:
        return None
    if with_visibility:
        return np.array([(p.x, p.y, p.visibility) for p in landmarks.landmark])
    return np.array([(p.x, p.y) for p in landmarks.landmark])


class PoseDetector:
    """Finds people's keypoints in photos. Models load once; calls are serialised by a lock."""

    def __init__(self) -> None:
        started = time.perf_counter()
        log.info("loading the MediaPipe pose, face and hand models (bundled with mediapipe, CPU)")
        try:
            from mediapipe.python.solution_base import SolutionBase

            self._person_detector = SolutionBase(graph_config=_PERSON_DETECTOR_GRAPH, outputs=["detections"])
            self._holistic = _static_holistic()
        except (ImportError, RuntimeError, ValueError, FileNotFoundError) as exc:
            raise ModelLoadError(
                f"could not load the MediaPipe pose models ({exc}); reinstall mediapipe==0.10.21"
            ) from exc
        self._lock = threading.Lock()
        log.info("pose models loaded in %.1f s", time.perf_counter() - started)

    def detect(self, image: Image.Image) -> Pose:
        """Keypoints of everybody clearly visible, in pixels of `image`; no people when nobody is found."""
        width, height = image.size
        factor = min(1.0, DETECT_MAX_SIDE / max(width, height))
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        if min(size) < MIN_DETECT_SIDE:
            log.debug("pose detection: a %dx%d image is too thin to hold a person", width, height)
            return Pose([], width, height)
        work_image = image.convert("RGB")
        if factor < 1.0:
            work_image = work_image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        work = np.ascontiguousarray(np.asarray(work_image, dtype=np.uint8))
        # Undo the working scale exactly (rounding the size changes the ratio slightly).
        back_x, back_y = width / work.shape[1], height / work.shape[0]
        started = time.perf_counter()
        with self._lock:
            found = self._find_people(work)
            people = self._landmarks_of_all(work, found)
        people = [p.mapped(back_x, back_y, 0.0, 0.0) for p in people]
        log.debug(
            "pose detection: %d person(s) in a %dx%d image in %.0f ms",
            len(people),
            width,
            height,
            (time.perf_counter() - started) * 1000,
        )
        return Pose(people, width, height)

    def _find_people(self, image: np.ndarray) -> list[_Found]:
        height, width = image.shape[:2]
        search = image.copy()
        found: list[_Found] = []
        windows = _windows(width, height)
        while len(found) < MAX_PEOPLE:
            candidates: list[_Found] = []
            for x0, y0, x1, y1 in windows:
                view = search if (x1 - x0, y1 - y0) == (width, height) else np.ascontiguousarray(search[y0:y1, x0:x1])
                candidates.extend(self._detect_persons(view, (x0, y0, x1, y1)))
            # The same person seen in several windows: keep the smallest window that holds their whole
            # head (the closest view, with the fewest neighbours in the crop), then the surest.
            candidates.sort(key=lambda c: (not c.head_in_window(), c.window_area(), -c.score))
            new: list[_Found] = []
            for candidate in candidates:
                cx, cy = (candidate.face[0] + candidate.face[2]) / 2, (candidate.face[1] + candidate.face[3]) / 2
                if not any(other.contains_face_point(cx, cy, 1.0) for other in found + new):
                    new.append(candidate)
            if not new:
                break
            for candidate in new:
                _hide(search, candidate.face_square(HIDE_FACE_SCALE_SEARCH))
            found.extend(new[: MAX_PEOPLE - len(found)])
        return found

    def _detect_persons(self, view: np.ndarray, window: tuple[int, int, int, int]) -> list[_Found]:
        """One pass of the person detector over `view` (the window of the image), in image pixels."""
        height, width = view.shape[:2]
        offset_x, offset_y = window[:2]
        result = self._person_detector.process({"image": view})
        out = []
        for detection in result.detections or []:
            score = float(detection.score[0])
            if score < MIN_PERSON_SCORE:
                continue
            box = detection.location_data.relative_bounding_box
            points = [
                (k.x * width + offset_x, k.y * height + offset_y) for k in detection.location_data.relative_keypoints
            ]
            x0, y0 = box.xmin * width + offset_x, box.ymin * height + offset_y
            face = (x0, y0, x0 + box.width * width, y0 + box.height * height)
            out.append(_Found(score, face, points[0], points[1], window))
        return out

    def _landmarks_of_all(self, image: np.ndarray, found: list[_Found]) -> list[Person]:
        people: dict[int, Person] = {}
        for index in range(len(found)):
            person = self._landmarks_of(image, found, index, [])
            if person is not None:
                people[index] = person
        missed = [index for index in range(len(found)) if index not in people]
        if missed and people:
            # Holistic locked on to a neighbour's body: try again with everyone already found hidden.
            bodies = [_extent(person) for person in people.values()]
            for index in missed:
                person = self._landmarks_of(image, found, index, bodies)
                if person is not None:
                    people[index] = person
        return [people[index] for index in sorted(people)]

    def _landmarks_of(
        self, image: np.ndarray, found: list[_Found], index: int, hidden: list[tuple[int, int, int, int]]
    ) -> Person | None:
        height, width = image.shape[:2]
        target = found[index]
        x0, y0, x1, y1 = target.crop_box(width, height)
        crop = image[y0:y1, x0:x1].copy()
        boxes = hidden + [o.face_square(HIDE_FACE_SCALE_CROP) for i, o in enumerate(found) if i != index]
        for bx0, by0, bx1, by1 in boxes:
            _hide(crop, (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0))
        if hidden:  # keep the target's own face visible, whatever covered it
            fx0, fy0, fx1, fy1 = target.face_square(HIDE_FACE_SCALE_CROP)
            fx0, fy0, fx1, fy1 = max(fx0, x0), max(fy0, y0), min(fx1, x1), min(fy1, y1)
            crop[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = image[fy0:fy1, fx0:fx1]
        result = self._holistic.process({"image": np.ascontiguousarray(crop)})
        body = _landmarks(result, "pose_landmarks", with_visibility=True)
        if body is None:
            log.debug("person %d: no landmarks in its crop", index)
            return None
        # Crop-normalized -> image-normalized, so "outside the image" is judged on the whole photo.
        crop_width, crop_height = x1 - x0, y1 - y0

        def to_image(points: np.ndarray | None) -> np.ndarray | None:
            if points is None:
                return None
            points = points.copy()
            points[:, 0] = (points[:, 0] * crop_width + x0) / width
            points[:, 1] = (points[:, 1] * crop_height + y0) / height
            return points

        body = to_image(body)
        if not target.contains_face_point(body[0, 0] * width, body[0, 1] * height):
            log.debug("person %d: the landmarks landed on someone else; dropped", index)
            return None
        return person_from_mediapipe(
            body,
            to_image(_landmarks(result, "left_hand_landmarks")),
            to_image(_landmarks(result, "right_hand_landmarks")),
            to_image(_landmarks(result, "face_landmarks")),
            width,
            height,
        )

    def close(self) -> None:
        with self._lock:
            self._person_detector.close()
            self._holistic.close()


_shared: PoseDetector | None = None
_shared_lock = threading.Lock()


def get_detector() -> PoseDetector:
    """The process-wide detector, created on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PoseDetector()
        return _shared
