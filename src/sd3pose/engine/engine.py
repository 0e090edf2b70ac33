"""The generation engine: prompts + pose map -> SD3 Medium + SD3 ControlNet -> images.

The model forward passes are diffusers' (SD3Transformer2DModel, SD3ControlNetModel, AutoencoderKL);
what a request means follows ComfyUI v0.12.1's SD3 + ControlNet workflow, the hosted service's:
classifier-free guidance with [uncond, cond] rows, the ControlNet fed the prompt tokens and zero
pooled projections, the pose map's latent the VAE posterior *mean* scaled without the VAE shift,
prompts read as ComfyUI reads them (`sd3pose.engine.text`), and the control window
control_start/control_end mapped to sigmas (`control_window`). Where the two agree (plain short
prompts, the whole schedule), the result equals diffusers' StableDiffusion3ControlNetPipeline.
The initial noise of sample i is drawn from seed + i on the CPU, so sample i of a batch equals a
single request with seed + i on any device (ComfyUI instead draws a whole batch from one seed).
Sampling itself (the k-diffusion-style loop over sigmas) is `sd3pose.sampling`'s job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import PIL.Image
import torch

from sd3pose.cache import LruCache, image_digest
from sd3pose.engine.loading import Components, check_offload, choose_device, choose_dtype, load_components
from sd3pose.engine.memory import log_peak_gpu_memory
from sd3pose.engine.offload import ModelOffload
from sd3pose.engine.speed import compile_models, prepare_models, vae_memory_format
from sd3pose.engine.text import PromptEmbeds, PromptEncoder
from sd3pose.errors import GenerationCancelledError, InvalidRequestError
from sd3pose.request import SIZE_MULTIPLE
from sd3pose.sampling.names import resolve_sampler_name, resolve_scheduler_name
from sd3pose.sampling.schedules import NUM_TRAIN_TIMESTEPS  # SD3 is conditioned on timestep = 1000 * sigma

logger = logging.getLogger(__name__)

CONTROL_CACHE_SIZE = 16  # control latents kept (one (1, 16, 128, 128) tensor per 1024 px pose map)
MAX_BATCH_IMAGES = 8  # most images one merged model batch holds (twice as many rows with guidance)
MAX_DECODE_IMAGES = 4  # most images one VAE decode call takes (the most one request may ask for)


@dataclass
class EngineJob:
    """One request's generation parameters (already validated by the request layer)."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seeds: list[int]  # one per sample; len == number of images
    strength: float  # ControlNet conditioning scale
    sampler: str  # canonical name from sd3pose.sampling
    scheduler: str
    width: int  # multiples of 16
    height: int
    control_image: PIL.Image.Image  # RGB, exactly width x height (the pose map)
    control_start: float = 0.0
    control_end: float = 1.0


def initial_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The starting noise: row i is randn(shape) from a CPU generator seeded with seeds[i], in float32."""
    rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) for seed in seeds]
    return torch.stack(rows).to(device)


def batch_key(job: EngineJob) -> tuple | None:
    """Jobs with equal keys can share one model batch; None when the job must run alone.

    The rows of a batch share the latent shape and the sigma schedule, so size, steps, sampler
    and scheduler must match. dpm_adaptive picks its steps from an error norm over the whole
    batch, so it never shares one (that would make a job's image depend on its neighbours).
    """
    from sd3pose.sampling import sampler_info

    sampler = resolve_sampler_name(job.sampler)
    if sampler_info(sampler).adaptive:
        return None
    return (job.width, job.height, job.steps, sampler, resolve_scheduler_name(job.scheduler))


def control_window(start: float, end: float, shift: float) -> tuple[float, float]:
    """The sigmas (highest, lowest) between which the ControlNet acts, for a window given in percent.

    ComfyUI maps control_start/control_end through the flow model sampling's percent_to_sigma and
    compares them with each model call's sigma in float32, edges included: see `control_active`.
    """
    from sd3pose.sampling.schedules import percent_to_sigma

    high, low = (float(torch.tensor(percent_to_sigma(p, shift), dtype=torch.float32)) for p in (start, end))
    return high, low


def control_active(sigma: float, window: tuple[float, float]) -> bool:
    """True when a model call at `sigma` (a float32 value) lies in the window, edges included."""
    high, low = window
    return low <= sigma <= high


@dataclass
class RowGroup:
    """One job's share of a (possibly merged) model batch: its conditioning and per-job knobs."""

    cond: PromptEmbeds
    uncond: PromptEmbeds | None  # needed when guidance_scale > 1 or the sampler is CFG++
    control: torch.Tensor  # (1, C, h, w) control latent
    samples: int
    guidance_scale: float
    strength: float
    control_start: float = 0.0
    control_end: float = 1.0


@dataclass
class _ModelCall:
    """Model rows whose contexts have one length, run through the models together.

    `rows` picks them out of all model rows (None: all of them, in order); the rest are those rows'
    conditioning, ControlNet strengths and control windows (see `control_window`).
    """

    rows: torch.Tensor | None
    tokens: torch.Tensor
    pooled: torch.Tensor
    control: torch.Tensor
    strengths: list[float]
    windows: list[tuple[float, float]]


class Sd3Denoiser:
    """D(x, sigma) -> x0 for a batch: batched ControlNet + transformer passes per call.

    With guidance > 1 the unconditional and conditional rows go through the models together
    ([uncond..., cond...], as diffusers orders them); at guidance 1 only the conditional rows run,
    unless the group carries a negative prompt anyway (the CFG++ samplers need its prediction).
    A merged batch holds several jobs' rows (one `RowGroup` each), each with its own prompt, negative
    prompt, control latent, guidance, strength and control window: guidance is applied per row, and
    when the rows' ControlNet scales differ the ControlNet runs at scale 1 and its residuals are
    scaled per row (the same float32 product diffusers forms with a scalar, so a row's result does
    not depend on its neighbours beyond matmul rounding). Prompts of different lengths (a long prompt
    reads more 77-token windows) cannot share one attention batch: rows run in one model call per
    context length, as ComfyUI runs a prompt and a negative prompt of different lengths apart.
    """

    def __init__(
        self,
        engine: Engine,
        groups: list[RowGroup],
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """A denoiser over the rows of `groups`, in the order given (x's rows follow the same order)."""
        if any(g.guidance_scale > 1.0 and g.uncond is None for g in groups):
            raise ValueError("guidance_scale > 1 needs the negative prompt's conditioning")
        self.engine = engine
        self.batch = sum(g.samples for g in groups)
        # Groups with a negative prompt get unconditional rows: guidance > 1, or CFG++ at any guidance.
        guided = [g for g in groups if g.uncond is not None]
        self.cfg = bool(guided)
        # Model rows: the unconditional rows of the guided jobs, then every job's conditional rows.
        blocks = [(g.uncond, g) for g in guided] + [(g.cond, g) for g in groups]
        self.calls = self._model_calls(blocks, engine.shift, engine.device)
        # Which of x's rows have an unconditional twin, and the guidance of each x row.
        flags = [g.uncond is not None for g in groups for _ in range(g.samples)]
        self.all_guided = all(flags)
        self.guided_rows = torch.tensor([i for i, f in enumerate(flags) if f], dtype=torch.long, device=engine.device)
        scales = [g.guidance_scale for g in groups for _ in range(g.samples) if g.uncond is not None]
        self.guidance = torch.tensor(scales, dtype=torch.float32, device=engine.device).view(-1, 1, 1, 1)
        # InstantX's SD3 ControlNets were trained with zero pooled projections (diffusers' and ComfyUI's rule).
        controlnet = engine.controlnet
        self.zero_control_pooled = getattr(controlnet.config, "force_zeros_for_pooled_projection", True)
        self.control_reads_tokens = controlnet.config.joint_attention_dim is not None
        self.cancelled = cancelled

    @staticmethod
    def _model_calls(
        blocks: list[tuple[PromptEmbeds, RowGroup]], shift: float, device: torch.device
    ) -> list[_ModelCall]:
        by_length: dict[int, list[int]] = {}
        row_blocks: list[tuple[PromptEmbeds, RowGroup]] = []
        for embeds, group in blocks:
            for _ in range(group.samples):
                by_length.setdefault(embeds.tokens.shape[1], []).append(len(row_blocks))
                row_blocks.append((embeds, group))
        calls = []
        for rows in by_length.values():
            picked = [row_blocks[i] for i in rows]
            calls.append(
                _ModelCall(
                    rows=None if len(by_length) == 1 else torch.tensor(rows, dtype=torch.long, device=device),
                    tokens=torch.cat([embeds.tokens for embeds, _ in picked]),
                    pooled=torch.cat([embeds.pooled for embeds, _ in picked]),
                    control=torch.cat([group.control for _, group in picked]),
                    strengths=[group.strength for _, group in picked],
                    windows=[control_window(group.control_start, group.control_end, shift) for _, group in picked],
                )
            )
        return calls

    def row_control_scales(self, call: _ModelCall, sigma: float) -> list[float]:
        """The ControlNet scale of each row of a model call at this sigma (strength x the control window)."""
        return [
            strength * float(control_active(sigma, window))
            for strength, window in zip(call.strengths, call.windows, strict=True)
        ]

    def _control_blocks(self, call: _ModelCall, model_in: torch.Tensor, timestep: torch.Tensor, sigma: float):
        scales = self.row_control_scales(call, sigma)
        if not any(scales):  # at scale 0 the ControlNet adds exact zeros: skip it
            return None
        # A compiled ControlNet always runs at scale 1 (scaled per row below): a Python float argument
        # would be a guard, and every new strength would compile another graph.
        uniform = len(set(scales)) == 1 and not self.engine.compiled
        blocks = self.engine.controlnet(
            hidden_states=model_in,
            timestep=timestep,
            encoder_hidden_states=call.tokens if self.control_reads_tokens else None,
            pooled_projections=torch.zeros_like(call.pooled) if self.zero_control_pooled else call.pooled,
            controlnet_cond=call.control,
            conditioning_scale=scales[0] if uniform else 1.0,
            return_dict=False,
        )[0]
        if uniform:
            return blocks
        # Per-row scales in float32, as PyTorch multiplies a low-precision tensor by a Python float.
        row_scale = torch.tensor(scales, dtype=torch.float32, device=model_in.device).view(-1, 1, 1)
        return [(block.float() * row_scale).to(block.dtype) for block in blocks]

    def _run(self, call: _ModelCall, model_in: torch.Tensor, sigma: float, value: float) -> torch.Tensor:
        timestep = torch.full((model_in.shape[0],), value, dtype=torch.float32, device=self.engine.device)
        return self.engine.transformer(
            hidden_states=model_in,
            timestep=timestep,
            encoder_hidden_states=call.tokens,
            pooled_projections=call.pooled,
            block_controlnet_hidden_states=self._control_blocks(call, model_in, timestep, sigma),
            return_dict=False,
        )[0]

    def velocity(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model's flow velocity for every model row (uncond rows first when guiding), in float32."""
        if self.cancelled is not None and self.cancelled():
            raise GenerationCancelledError("the generation was cancelled")
        model_in = x.to(self.engine.dtype)
        if self.cfg:
            uncond_in = model_in if self.all_guided else model_in.index_select(0, self.guided_rows)
            model_in = torch.cat([uncond_in, model_in])
        # The float32 product diffusers forms, filled on the device without a blocking host-to-device copy.
        value = torch.tensor(sigma, dtype=torch.float32).mul(NUM_TRAIN_TIMESTEPS).item()
        if len(self.calls) == 1:
            return self._run(self.calls[0], model_in, sigma, value).float()
        velocity = torch.empty_like(model_in, dtype=torch.float32)
        for call in self.calls:
            part = self._run(call, model_in.index_select(0, call.rows), sigma, value)
            velocity.index_copy_(0, call.rows, part.float())
        return velocity

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, *, return_uncond: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # Keep the timestep in float32 like diffusers, whatever precision the sampler works in.
        s = float(torch.as_tensor(sigma, dtype=torch.float32))
        v = self.velocity(x, s)
        if not self.cfg:
            v_uncond = v_guided = v
        else:
            n_uncond = v.shape[0] - self.batch
            v_u, v_cond = v[:n_uncond], v[n_uncond:]
            v_c = v_cond if self.all_guided else v_cond.index_select(0, self.guided_rows)
            guided = v_u + self.guidance * (v_c - v_u)
            if self.all_guided:
                v_guided, v_uncond = guided, v_u
            else:
                v_guided = v_cond.index_copy(0, self.guided_rows, guided)
                v_uncond = v_cond.index_copy(0, self.guided_rows, v_u)
        x0 = x - s * v_guided.to(x.dtype)
        if return_uncond:
            return x0, (x - s * v_uncond.to(x.dtype))
        return x0


class Engine:
    """SD3 Medium + an SD3 ControlNet, loaded once, generating images for EngineJobs."""

    def __init__(self, parts: Components, device: torch.device, dtype: torch.dtype, *, optimize: bool = True) -> None:
        """Wrap loaded components; `optimize=False` leaves the diffusers models exactly as loaded."""
        from diffusers.image_processor import VaeImageProcessor

        self.device, self.dtype = device, dtype
        self.transformer = parts.transformer
        self.controlnet = parts.controlnet
        self.vae = parts.vae
        self.shift = parts.shift
        self.is_demo = parts.is_demo
        self.use_t5 = parts.text_encoder_3 is not None
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        config = self.transformer.config
        self.native_resolution: int = int(config.sample_size) * self.vae_scale_factor
        self.max_side: int = int(config.pos_embed_max_size) * int(config.patch_size) * self.vae_scale_factor
        self.latent_channels: int = int(config.in_channels)
        self.text = PromptEncoder(
            parts.text_encoder,
            parts.tokenizer,
            parts.text_encoder_2,
            parts.tokenizer_2,
            parts.text_encoder_3,
            parts.tokenizer_3,
            joint_attention_dim=int(config.joint_attention_dim),
            device=device,
            dtype=dtype,
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.control_cache: LruCache[torch.Tensor] = LruCache(CONTROL_CACHE_SIZE)
        self.compiled = False
        self.offload: ModelOffload | None = None
        if optimize:
            prepare_models(self.transformer, self.controlnet, self.vae, device, self.native_resolution)

    @classmethod
    def load(
        cls,
        model: str | Path,
        controlnet: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        use_t5: bool = True,
        compile: bool = False,
        offload: bool = False,
        warm_up: bool = True,
    ) -> Engine:
        """Load from local folders (diffusers layout) or hub ids; device and dtype default sensibly.

        `compile=True` runs torch.compile on the transformer and ControlNet and, with `warm_up`, compiles
        the default shapes here, so a server's first request does not pay for compilation (a one-shot
        command compiles only the shapes its own request needs, on first use). `offload=True` keeps the
        models in main memory and moves each to the GPU while it runs (engine/offload.py), for GPUs
        under 16 GB.
        """
        started = time.perf_counter()
        chosen_device = choose_device(device)
        check_offload(offload, chosen_device, compile)
        chosen_dtype = choose_dtype(dtype, chosen_device)
        parts = load_components(
            model, controlnet, device=chosen_device, dtype=chosen_dtype, use_t5=use_t5, offload=offload
        )
        engine = cls(parts, chosen_device, chosen_dtype)
        if offload:
            engine.enable_offload()
        logger.info(
            "model ready in %.1f s on %s (%s, T5 %s, native size %d px%s)",
            time.perf_counter() - started,
            chosen_device,
            str(chosen_dtype).removeprefix("torch."),
            "on" if use_t5 else "off",
            engine.native_resolution,
            ", offloaded to main memory between uses" if offload else "",
        )
        if compile:
            engine.compile(warm_up=warm_up)
        if engine.is_demo:
            logger.warning(
                "this is a random-weight test model (sd3pose make-tiny-model): its images are noise, not pictures; "
                "run `sd3pose download DIR` and point the server at real weights for real images"
            )
        return engine

    def enable_offload(self) -> None:
        """Keep the models in main memory and move each to the device only while it runs."""
        self.offload = ModelOffload(
            text_encoders=self.text.models,
            controlnet=self.controlnet,
            transformer=self.transformer,
            vae=self.vae,
            device=self.device,
        )

    @contextmanager
    def _serving(self, what: str) -> Iterator[None]:
        """Around one request or batch: log its peak GPU memory, and with offload empty the GPU after it."""
        with log_peak_gpu_memory(self.device, what):
            try:
                yield
            finally:
                if self.offload is not None:
                    self.offload.release()

    def compile(self, *, backend: str = "inductor", mode: str | None = None, warm_up: bool = True) -> None:
        """torch.compile the transformer and ControlNet, then (`warm_up`) compile the shapes a default
        request uses."""
        started = time.perf_counter()
        compile_models(self.transformer, self.controlnet, backend=backend, mode=mode)
        self.compiled = True
        if not warm_up:
            return
        size = self.native_resolution
        black = PIL.Image.new("RGB", (size, size))
        # One and two images with guidance (2 and 4 model rows; the second makes the batch size dynamic),
        # and one without (1 row: torch.compile always specialises a batch of 1).
        for seeds, guidance in (([0], 7.0), ([0, 1], 7.0), ([0], 1.0)):
            warmup = EngineJob("warm-up", "", 2, guidance, seeds, 0.8, "euler", "normal", size, size, black)
            logger.info("compile warm-up: %d image(s) of %dx%d, guidance %g, 2 steps", len(seeds), size, size, guidance)
            self.generate_latents(warmup)
        logger.info("models compiled and warmed up in %.1f s", time.perf_counter() - started)

    # ---- validation -------------------------------------------------------------------------

    def check_job(self, job: EngineJob) -> EngineJob:
        """Raise InvalidRequestError for what the models cannot run; return the job with canonical names."""
        for name, value in (("width", job.width), ("height", job.height)):
            if value <= 0 or value % SIZE_MULTIPLE:
                lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
                raise InvalidRequestError(
                    f"{name} {value} is not a positive multiple of {SIZE_MULTIPLE}; use e.g. {lower}"
                )
            if value > self.max_side:
                raise InvalidRequestError(
                    f"{name} {value} is larger than this model allows; use at most {self.max_side}"
                )
        if job.steps < 1:
            raise InvalidRequestError(f"steps must be at least 1 (got {job.steps})")
        if not job.seeds:
            raise InvalidRequestError("at least one seed is needed (one per image)")
        if job.guidance_scale < 1:
            raise InvalidRequestError(f"guidance_scale must be at least 1 (got {job.guidance_scale})")
        if job.strength < 0:
            raise InvalidRequestError(f"strength must be 0 or more (got {job.strength})")
        if not 0 <= job.control_start < job.control_end <= 1:
            raise InvalidRequestError(
                "control_start and control_end must satisfy 0 <= start < end <= 1 "
                f"(got {job.control_start} and {job.control_end})"
            )
        if not isinstance(job.control_image, PIL.Image.Image):
            raise InvalidRequestError("the control image must be a PIL image (the pose map)")
        return replace(job, sampler=resolve_sampler_name(job.sampler), scheduler=resolve_scheduler_name(job.scheduler))

    # ---- the pieces -------------------------------------------------------------------------

    def encode_control(self, image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
        """The pose map's VAE latent (1, C, h, w), scaled as the ControlNet expects; cached by content.

        The returned tensor is shared with the cache: never modify it in place.
        """
        image = image.convert("RGB")
        key = (image_digest(image), width, height)
        return self.control_cache.get_or_compute(key, lambda: self._encode_control(image, width, height))

    @torch.inference_mode()
    def _encode_control(self, image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
        if image.size != (width, height):
            logger.warning("control image is %dx%d; resizing it to %dx%d", *image.size, width, height)
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        pixels = pixels.to(device=self.device, dtype=self.dtype, memory_format=vae_memory_format(self.device))
        latent = self.vae.encode(pixels).latent_dist.mean
        # InstantX's SD3 ControlNets were trained without the VAE shift (diffusers' rule).
        if getattr(self.controlnet.config, "force_zeros_for_pooled_projection", True):
            shift = 0.0
        else:
            shift = self.vae.config.shift_factor
        return (latent - shift) * self.vae.config.scaling_factor

    def sigmas(self, scheduler: str, steps: int, sampler: str | None = None) -> torch.Tensor:
        """The schedule ComfyUI's KSampler hands ``sampler`` (some samplers drop a sigma)."""
        from sd3pose.sampling import get_sigmas

        return get_sigmas(scheduler, steps, shift=self.shift, sampler=sampler)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list[PIL.Image.Image]:
        """Final latents -> RGB images."""
        config = self.vae.config
        scaled = latents / config.scaling_factor + (config.shift_factor or 0.0)
        scaled = scaled.to(self.dtype, memory_format=vae_memory_format(self.device))
        pixels = self.vae.decode(scaled, return_dict=False)[0]
        return self.image_processor.postprocess(pixels, output_type="pil")

    # ---- generation -------------------------------------------------------------------------

    def generate_latents(
        self,
        job: EngineJob,
        *,
        on_step: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """The final latents (samples, C, h, w) in float32, before VAE decoding."""
        return self.generate_batch_latents([job], on_step=[on_step], cancelled=[cancelled])[0]

    @torch.inference_mode()
    def generate_batch_latents(
        self,
        jobs: list[EngineJob],
        *,
        on_step: list[Callable[[int, int], None] | None] | None = None,
        cancelled: list[Callable[[], bool] | None] | None = None,
    ) -> list[torch.Tensor]:
        """Final latents of several compatible jobs (equal `batch_key`), sampled as one model batch.

        Each job keeps its own prompts, seeds, guidance, strength, control image and window; its
        latents equal running it alone up to matmul rounding. `on_step[i]`/`cancelled[i]` belong to
        job i. The denoiser stops sampling (GenerationCancelledError) at its next model call once every
        job is cancelled; a job cancelled earlier keeps its rows computed, and generate_batch discards them.
        """
        from sd3pose.sampling import sample, sampler_info

        jobs = [self.check_job(job) for job in jobs]
        if not jobs:
            return []
        key = batch_key(jobs[0])
        if (key is None and len(jobs) > 1) or any(batch_key(job) != key for job in jobs[1:]):
            raise ValueError("generate_batch_latents needs jobs with one batch_key (size, steps, sampler, scheduler)")
        on_step = list(on_step) if on_step is not None else [None] * len(jobs)
        checks = [c for c in (cancelled or []) if c is not None]
        if (cancelled is not None and len(cancelled) != len(jobs)) or len(on_step) != len(jobs):
            raise ValueError("on_step and cancelled need one entry per job")

        if key is None and len(jobs[0].seeds) > 1:
            return [self._latents_seed_by_seed(jobs[0], on_step[0], (cancelled or [None])[0])]

        def all_cancelled() -> bool:
            # Jobs without a cancel check never cancel, so a batch with one of them runs to the end.
            return bool(checks) and len(checks) == len(jobs) and all(check() for check in checks)

        first = jobs[0]
        started = time.perf_counter()
        images = sum(len(job.seeds) for job in jobs)
        logger.info(
            "generating %d image(s) of %dx%d for %d job(s): %d steps of %s/%s, guidance %s, strength %s",
            images,
            first.width,
            first.height,
            len(jobs),
            first.steps,
            first.sampler,
            first.scheduler,
            ",".join(f"{job.guidance_scale:g}" for job in jobs),
            ",".join(f"{job.strength:g}" for job in jobs),
        )
        cfg_pp = sampler_info(first.sampler).needs_uncond  # ComfyUI's CFG++ uses the negative prompt even at 1
        groups = [
            RowGroup(
                cond=self.text.encode(job.prompt),
                uncond=self.text.encode(job.negative_prompt) if job.guidance_scale > 1 or cfg_pp else None,
                control=self.encode_control(job.control_image, job.width, job.height),
                samples=len(job.seeds),
                guidance_scale=job.guidance_scale,
                strength=job.strength,
                control_start=job.control_start,
                control_end=job.control_end,
            )
            for job in jobs
        ]
        sigmas = self.sigmas(first.scheduler, first.steps, first.sampler)
        denoiser = Sd3Denoiser(self, groups, cancelled=all_cancelled if checks else None)
        shape = (self.latent_channels, first.height // self.vae_scale_factor, first.width // self.vae_scale_factor)
        seeds = [seed for job in jobs for seed in job.seeds]
        x = initial_noise(seeds, shape, self.device) * float(sigmas[0])

        def callback(info: dict) -> None:
            done, total = int(info["i"]) + 1, int(info["total"])
            logger.debug("step %d/%d", done, total)
            for report in on_step:
                if report is not None:
                    report(done, total)

        latents = sample(first.sampler, denoiser, x, sigmas, seed=seeds, callback=callback, shift=self.shift).float()
        logger.info("sampling done in %.2f s", time.perf_counter() - started)
        return list(latents.split([len(job.seeds) for job in jobs]))

    def _latents_seed_by_seed(
        self, job: EngineJob, on_step: Callable[[int, int], None] | None, cancelled: Callable[[], bool] | None
    ) -> torch.Tensor:
        """dpm_adaptive chooses its steps per image from the model's outputs: each seed runs as its own
        request (the model rows then always match the latent rows); progress counts all of them."""
        parts = []
        for n, seed in enumerate(job.seeds):

            def report(done: int, total: int, n: int = n) -> None:
                if on_step is not None:
                    on_step(n * total + done, total * len(job.seeds))

            single = replace(job, seeds=[seed])
            parts.append(self.generate_batch_latents([single], on_step=[report], cancelled=[cancelled])[0])
        return torch.cat(parts)

    def generate(
        self,
        job: EngineJob,
        *,
        on_step: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[PIL.Image.Image]:
        """One image per seed of the job; `cancelled` stops sampling at the next model call."""
        with self._serving(f"1 job, {len(job.seeds)} image(s) of {job.width}x{job.height}"):
            return self.decode(self.generate_latents(job, on_step=on_step, cancelled=cancelled))

    def generate_batch(
        self,
        jobs: list[EngineJob],
        *,
        on_step: list[Callable[[int, int], None] | None] | None = None,
        cancelled: list[Callable[[], bool] | None] | None = None,
        max_batch_images: int = MAX_BATCH_IMAGES,
    ) -> list[list[PIL.Image.Image] | Exception]:
        """Images for each job, or the exception that job failed with; one bad job never fails the others.

        Compatible jobs (equal `batch_key`) are merged into model batches of at most `max_batch_images`
        images (a single job larger than that runs alone); the rest run one after another.
        """
        images = sum(len(job.seeds) for job in jobs)
        with self._serving(f"{len(jobs)} job(s), {images} image(s)"):
            return self._generate_batch(jobs, on_step, cancelled, max_batch_images)

    def _generate_batch(
        self,
        jobs: list[EngineJob],
        on_step: list[Callable[[int, int], None] | None] | None,
        cancelled: list[Callable[[], bool] | None] | None,
        max_batch_images: int,
    ) -> list[list[PIL.Image.Image] | Exception]:
        on_step = list(on_step) if on_step is not None else [None] * len(jobs)
        cancelled = list(cancelled) if cancelled is not None else [None] * len(jobs)
        results: list[list[PIL.Image.Image] | Exception | None] = [None] * len(jobs)
        batches: dict[object, list[list[int]]] = {}
        for i, job in enumerate(jobs):
            try:
                key = batch_key(self.check_job(job))
            except Exception as exc:
                results[i] = exc
                continue
            open_batches = batches.setdefault(key if key is not None else ("alone", i), [[]])
            current = open_batches[-1]
            if current and sum(len(jobs[j].seeds) for j in current) + len(job.seeds) > max_batch_images:
                current = []
                open_batches.append(current)
            current.append(i)
        for number, members in enumerate(m for group in batches.values() for m in group):
            if number and self.offload is not None:
                # Each model batch starts from an empty GPU, as a request does: its text encoders must not
                # join the ControlNet and the VAE that the previous batch left there.
                self.offload.release()
            try:
                latents = self.generate_batch_latents(
                    [jobs[i] for i in members],
                    on_step=[on_step[i] for i in members],
                    cancelled=[cancelled[i] for i in members],
                )
            except Exception as exc:
                for i in members:
                    results[i] = exc
                continue
            live = []
            for i, job_latents in zip(members, latents, strict=True):
                if cancelled[i] is not None and cancelled[i]():
                    results[i] = GenerationCancelledError("the generation was cancelled")
                else:
                    live.append((i, job_latents))
            if not live:
                continue
            try:  # decoded together, in chunks no larger than one request's images
                images = [
                    image
                    for chunk in torch.cat([lat for _, lat in live]).split(MAX_DECODE_IMAGES)
                    for image in self.decode(chunk)
                ]
            except Exception as exc:
                for i, _ in live:
                    results[i] = exc
                continue
            start = 0
            for i, job_latents in live:
                results[i] = images[start : start + len(job_latents)]
                start += len(job_latents)
        return [r if r is not None else RuntimeError("job was not run") for r in results]
