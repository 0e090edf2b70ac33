"""One request end to end: input image -> control image (pose) -> engine -> encoded images.

This is the only place that knows every stage; HTTP, CLI and workers all call `Generator.run`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from sd3pose.engine.engine import Engine, EngineJob
from sd3pose.errors import ModelLoadError
from sd3pose.images import InputLimits, encode_image, load_image, media_type
from sd3pose.pose.cache import CachedPoseDetector
from sd3pose.pose.control import ControlResult, build_control_image
from sd3pose.pose.detect import PoseDetector, get_detector
from sd3pose.pose.keypoints import Pose
from sd3pose.pose.openpose_json import pose_from_openpose_json, pose_to_openpose_json
from sd3pose.request import (
    MAX_SIDE,
    MIN_SIDE,
    SIZE_MULTIPLE,
    GenerationRequest,
    OutputFormat,
    default_size,
)
from sd3pose.results import GenerationResult, PosePreview
from sd3pose.settings import EngineSettings

log = logging.getLogger(__name__)


def _round16(side: float) -> int:
    return int(min(MAX_SIDE, max(MIN_SIDE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)))


def output_size(
    request: GenerationRequest, image: Image.Image | None, keypoints: Pose | None, native: int
) -> tuple[int, int]:
    """The generation size: the request's, else the input's aspect ratio at about native x native pixels."""
    if image is not None:
        source = image.size
    elif keypoints is not None:
        source = (keypoints.width, keypoints.height)
    else:
        source = (native, native)
    if request.width and request.height:
        return request.width, request.height
    # One side given: the other follows the input's aspect ratio (rounded to 16).
    aspect = source[0] / source[1]
    if request.width:
        return request.width, _round16(request.width / aspect)
    if request.height:
        return _round16(request.height * aspect), request.height
    return default_size(*source, native=native)


def prepare_control(
    request: GenerationRequest,
    *,
    native: int,
    input_limits: InputLimits,
    detector: PoseDetector | None = None,
    timings: dict[str, float] | None = None,
) -> ControlResult:
    """The pose map a request generates with, at its generation size (no models needed but the detector's).

    `native` is the model's native side in pixels (for the default size); `detector` finds poses in
    photos (default: the process-wide MediaPipe detector, loaded only when a photo needs it).
    """
    timings = timings if timings is not None else {}
    start = time.perf_counter()
    image = load_image(request.image, input_limits) if request.image is not None else None
    timings["load_image"] = time.perf_counter() - start

    given = pose_from_openpose_json(request.pose_keypoints) if request.pose_keypoints is not None else None
    width, height = output_size(request, image, given, native)
    start = time.perf_counter()
    control = build_control_image(
        image,
        given,
        mode=request.pose_mode,
        parts=request.pose_parts,
        width=width,
        height=height,
        resize_mode=request.resize_mode,
        detector=detector,  # used only for a photo that needs detecting
    )
    timings["pose"] = time.perf_counter() - start
    return control


class Generator:
    """Owns one Engine (one device) and the process-wide pose detector (behind a per-Generator cache)."""

    def __init__(
        self, engine: Engine, detector: PoseDetector | None = None, input_limits: InputLimits | None = None
    ) -> None:
        self.engine = engine
        self._detector = CachedPoseDetector(detector) if detector is not None else None
        self.input_limits = input_limits or InputLimits()

    @classmethod
    def create(
        cls, settings: EngineSettings, *, input_limits: InputLimits | None = None, warm_up: bool = False
    ) -> Generator:
        """Load the models. `warm_up` (servers and workers) also loads the pose models and, with
        `compile`, compiles the default shapes now, so no request pays for them; a one-shot command
        skips both, as its one request may need neither."""
        if settings.model is None or settings.controlnet is None:
            raise ModelLoadError(
                "give both --model and --controlnet: folders or hub ids (e.g. InstantX/SD3-Controlnet-Pose)"
            )
        engine = Engine.load(
            settings.model,
            settings.controlnet,
            device=settings.device,
            dtype=settings.dtype,
            use_t5=settings.use_t5,
            compile=settings.compile,
            offload=settings.offload,
            warm_up=warm_up,
        )
        generator = cls(engine, input_limits=input_limits)
        if warm_up:
            generator.warm_up()
        return generator

    @property
    def detector(self) -> CachedPoseDetector:
        # Lazily: a worker that only receives ready pose maps never pays for the mediapipe graphs.
        if self._detector is None:
            self._detector = CachedPoseDetector(get_detector())
        return self._detector

    def warm_up(self) -> None:
        """Load the pose models now (a few seconds), so a server's first photo is not slow."""
        log.info("loading the pose detection models")
        self.detector.detect(Image.new("RGB", (64, 64)))

    def _control(self, request: GenerationRequest, timings: dict[str, float]) -> ControlResult:
        return prepare_control(
            request,
            native=self.engine.native_resolution,
            input_limits=self.input_limits,
            detector=_DetectorOnFirstUse(lambda: self.detector),
            timings=timings,
        )

    def preview_pose(self, request: GenerationRequest) -> PosePreview:
        """The control image and keypoints a generation with this request would use."""
        control = self._control(request, {})
        keypoints = pose_to_openpose_json(control.pose) if control.pose is not None else None
        pose_png = encode_image(control.image, OutputFormat.png)
        return PosePreview(pose_png, keypoints, control.image.width, control.image.height, control.detected)

    def _engine_job(self, request: GenerationRequest, control: ControlResult) -> EngineJob:
        width, height = control.image.size
        return EngineJob(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seeds=request.seeds,
            strength=request.strength,
            sampler=request.sampler,
            scheduler=request.scheduler,
            width=width,
            height=height,
            control_image=control.image,
            control_start=request.control_start,
            control_end=request.control_end,
        )

    def _result(
        self, request: GenerationRequest, control: ControlResult, images: list[Image.Image], timings: dict[str, float]
    ) -> GenerationResult:
        start = time.perf_counter()
        encoded = [encode_image(image, request.output_format) for image in images]
        pose_png: bytes | None = None
        keypoints: dict[str, Any] | None = None
        if request.return_pose:
            pose_png = encode_image(control.image, OutputFormat.png)
            keypoints = pose_to_openpose_json(control.pose) if control.pose is not None else None
        timings["encode"] = time.perf_counter() - start
        return GenerationResult(
            images=encoded,
            media_type=media_type(request.output_format),
            seeds=request.seeds,
            width=control.image.width,
            height=control.image.height,
            pose_png=pose_png,
            keypoints=keypoints,
            timings=timings,
        )

    def run(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        total_start = time.perf_counter()
        timings: dict[str, float] = {}
        control = self._control(request, timings)
        job = self._engine_job(request, control)
        start = time.perf_counter()
        images = self.engine.generate(job, on_step=on_step, cancelled=cancelled)
        timings["generate"] = time.perf_counter() - start
        result = self._result(request, control, images, timings)
        timings["total"] = time.perf_counter() - total_start
        return result

    def run_batch(
        self,
        requests: list[GenerationRequest],
        *,
        on_step: list[Callable[[int, int], None] | None] | None = None,
        cancelled: list[Callable[[], bool] | None] | None = None,
    ) -> list[GenerationResult | Exception]:
        """Run several requests, merging compatible ones (same size, steps, sampler, scheduler) into
        one model batch (dynamic batching). Each keeps its own seeds, prompts and knobs, and gets the
        images it would get alone; a request that fails gets its exception, the others still run.
        `on_step[i]` and `cancelled[i]` belong to request i."""
        batch_start = time.perf_counter()
        count = len(requests)
        on_step = list(on_step) if on_step is not None else [None] * count
        cancelled = list(cancelled) if cancelled is not None else [None] * count
        outcomes: list[GenerationResult | Exception | None] = [None] * count
        prepared: list[tuple[int, ControlResult, EngineJob, dict[str, float]]] = []
        for i, request in enumerate(requests):
            timings: dict[str, float] = {}
            try:
                control = self._control(request, timings)
                prepared.append((i, control, self._engine_job(request, control), timings))
            except Exception as exc:
                outcomes[i] = exc
        start = time.perf_counter()
        generated = self.engine.generate_batch(
            [job for _, _, job, _ in prepared],
            on_step=[on_step[i] for i, _, _, _ in prepared],
            cancelled=[cancelled[i] for i, _, _, _ in prepared],
        )
        generate_s = time.perf_counter() - start
        log.info("batch of %d request(s): generation took %.2f s", len(prepared), generate_s)
        for (i, control, _, timings), images in zip(prepared, generated, strict=True):
            if isinstance(images, Exception):
                outcomes[i] = images
                continue
            timings["generate"] = generate_s  # shared: the requests ran together
            try:
                outcomes[i] = self._result(requests[i], control, images, timings)
            except Exception as exc:
                outcomes[i] = exc
                continue
            timings["total"] = time.perf_counter() - batch_start
        return [o if o is not None else RuntimeError("request was not run") for o in outcomes]


class _DetectorOnFirstUse:
    """A detector loaded only if an image really needs detecting (auto mode keeps ready pose maps as
    they are, and loading MediaPipe takes about a second)."""

    def __init__(self, get: Callable[[], PoseDetector | CachedPoseDetector]) -> None:
        self._get = get

    def detect(self, image: Image.Image) -> Pose:
        return self._get().detect(image)
