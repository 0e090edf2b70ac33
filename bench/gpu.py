"""GPU benchmark at SD3 Medium size: diffusers' StableDiffusion3ControlNetPipeline vs our engine.

Nothing is downloaded: every model is built from the published configs (SD3 Medium's transformer,
VAE, CLIP-L, CLIP-G, T5-XXL; InstantX's 6-layer SD3 ControlNet) with random weights, directly on
the GPU in the target dtype; the tokenizers are the tiny model's offline-built ones (their small
vocabularies change nothing about speed). The request: 1024x1024, 20 steps, guidance 7, ControlNet
strength 0.8, one image, decoded to PIL. diffusers runs its defaults (FlowMatchEuler); ours runs the
service default dpmpp_2m + sgm_uniform (one model evaluation per step, like Euler). Both start
from the same noise. Per dtype (bf16, then fp16) the arms alternate after a warm-up each:

  diffusers            the pipeline with its defaults (SDPA attention, nothing fused, not compiled)
  ours cold            our engine, prompt and control-latent caches emptied before each run
  ours warm            the same request again (caches warm)
  ours compiled cold   after `Engine.compile()` (torch.compile + warm-up), caches emptied

and prints seconds per image (medians), ratios against diffusers (median of per-round ratios),
peak GPU memory, and how close our image is to diffusers' from the same noise (euler + "normal"
schedule for that check, which is what diffusers runs). The results replace the section between
the GPU markers in --results (default bench/RESULTS.md) with card, date and versions.

On a GPU machine (the working tree is a copy there; write the results where they come back). The
engine arms need torch, diffusers, transformers, tokenizers and sentencepiece; the whole-request
arms also mediapipe and pydantic, and are skipped with a note where those are missing. With this
workplace's device image, which lacks diffusers, carry its wheel (see bench/RESULTS.md):

    cp bench/RESULTS.md $OUT/RESULTS.md
    PYTHONPATH=src python3 bench/gpu.py --results $OUT/RESULTS.md      # about 5-7 minutes on an H100

On a CPU, at toy scale, to check the script end to end (compile uses the "eager" backend there):

    .venv/bin/python bench/gpu.py --smoke --results /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import logging
import platform
import re
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

START_MARK, END_MARK = "<!-- gpu:start -->", "<!-- gpu:end -->"
PROMPT, NEGATIVE = "a dancer in a red dress on a stage, studio lighting", "low quality,less details"
SEED, STRENGTH, GUIDANCE = 698845, 0.8, 7.0

# Published configs (stabilityai/stable-diffusion-3-medium-diffusers, InstantX/SD3-Controlnet-Pose).
SD3_MEDIUM = dict(
    transformer=dict(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=192,
    ),
    controlnet_layers=6,
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=1024),
    clip_l=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
    clip_g=dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
    ),
    t5=dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, relative_attention_num_buckets=32),
    size=1024,
    steps=20,
)
# The same recipe at toy scale, for --smoke on a CPU.
SMOKE = dict(
    transformer=dict(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=16,
    ),
    controlnet_layers=1,
    vae=dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64),
    clip_l=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
        hidden_act="quick_gelu",
    ),
    clip_g=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
        hidden_act="gelu",
    ),
    t5=dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, relative_attention_num_buckets=8),
    size=64,
    steps=3,
)

TARGET_S_PER_IMAGE, TARGET_SPEEDUP = 1.5, 1.3  # the targets, for an H100 at SD3 Medium size
LATENT_RTOL_HALF, PIXEL_MEAN_TOL_HALF = 0.05, 2.0  # "images match" in fp16/bf16 (see run_dtype)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype` (no fp32 copy on the CPU first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def build_models(config: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Random-weight models of the configured size, in eval mode, on `device` in `dtype`."""
    from diffusers import AutoencoderKL, SD3ControlNetModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from sd3pose.cli.tiny_model import build_clip_tokenizer, build_t5_tokenizer

    tokenizers = [build_clip_tokenizer(), build_clip_tokenizer(pad_token="!"), build_t5_tokenizer()]
    torch.manual_seed(0)
    with building(device, dtype):
        transformer = SD3Transformer2DModel(**config["transformer"])
        controlnet = SD3ControlNetModel(**{**config["transformer"], "num_layers": config["controlnet_layers"]})
        # A fresh ControlNet's output layers are zeros; real ones are not (and zeros would be skippable).
        for module in (controlnet.controlnet_blocks, controlnet.pos_embed_input):
            for param in module.parameters():
                torch.nn.init.normal_(param, std=0.02)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=16,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
            **config["vae"],
        )
        with torch.no_grad():  # a trained VAE's posterior is nearly a point: make sample() ~ mean
            vae.encoder.conv_out.weight[16:].zero_()
            vae.encoder.conv_out.bias[16:].fill_(-30.0)

        def clip(tokenizer, sizes: dict) -> CLIPTextModelWithProjection:
            return CLIPTextModelWithProjection(
                CLIPTextConfig(
                    vocab_size=len(tokenizer),
                    max_position_embeddings=77,
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                    **sizes,
                )
            )

        clip_l, clip_g = clip(tokenizers[0], config["clip_l"]), clip(tokenizers[1], config["clip_g"])
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizers[2]),
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
                use_cache=False,
                pad_token_id=0,
                eos_token_id=1,
                **config["t5"],
            )
        )
    models = dict(
        transformer=transformer,
        controlnet=controlnet,
        vae=vae,
        text_encoder=clip_l,
        text_encoder_2=clip_g,
        text_encoder_3=t5,
    )
    for model in models.values():
        model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return dict(models, tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], tokenizer_3=tokenizers[2])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Arm:
    name: str
    run: Callable[[], object]
    times: list[float] = field(default_factory=list)
    peak_gb: float = 0.0  # most GPU memory allocated during a run (models of both sides included)
    own_gb: float = 0.0  # of which the run itself added, above what was resident when it started


def measure(arms: list[Arm], rounds: int, device: torch.device) -> None:
    """Alternate the arms (rotating who goes first) after one warm-up each."""
    for arm in arms:
        arm.run()
    for i in range(rounds):
        for arm in arms[i % len(arms) :] + arms[: i % len(arms)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)
            sync(device)
            started = time.perf_counter()
            arm.run()
            sync(device)
            arm.times.append(time.perf_counter() - started)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                arm.peak_gb = max(arm.peak_gb, peak / 2**30)
                arm.own_gb = max(arm.own_gb, (peak - resident) / 2**30)


def pose_map(size: int) -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    width = max(2, size // 100)
    for _ in range(12):
        x0, x1 = rng.integers(0, size, 2)
        y0, y1 = rng.integers(0, size, 2)
        for t in np.linspace(0, 1, 2 * size):
            x, y = int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))
            pixels[max(0, y - width) : y + width, max(0, x - width) : x + width] = rng.permutation([255, 85, 0])
    return PIL.Image.fromarray(pixels)


def photo_request(engine: object, size: int, steps: int) -> tuple:
    """A Generator on the engine, and a request with scikit-image's astronaut photo (pose detected)."""
    import base64
    import io

    from skimage import data

    from sd3pose.pipeline import Generator
    from sd3pose.pose.detect import get_detector
    from sd3pose.request import parse_request

    buffer = io.BytesIO()
    PIL.Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=95)
    request = parse_request(
        {
            "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "width": size,
            "height": size,
            "num_inference_steps": steps,
            "seed": SEED,
            "strength": STRENGTH,
        }
    )
    return Generator(engine, detector=get_detector()), request


def versions(device: torch.device) -> str:
    import diffusers
    import transformers

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    return (
        f"{card}; torch {torch.__version__}{cuda}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}"
    )


def run_dtype(name: str, config: dict, args: argparse.Namespace, device: torch.device, deadline: float) -> list[str]:
    """Benchmark one dtype; return its markdown table rows and notes."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3ControlNetPipeline

    from sd3pose.engine import Engine, EngineJob, initial_noise
    from sd3pose.engine.loading import Components

    dtype, size, steps = DTYPES[name], config["size"], config["steps"]
    started = time.perf_counter()
    print(f"\n== {name}: building SD3-size random models on {device}...", flush=True)
    parts = build_models(config, device, dtype)
    # diffusers gets pristine copies of what our engine changes in place (fused QKV, trim, channels-last VAE).
    pipe = StableDiffusion3ControlNetPipeline(
        transformer=copy.deepcopy(parts["transformer"]),
        controlnet=copy.deepcopy(parts["controlnet"]),
        vae=copy.deepcopy(parts["vae"]),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        **{
            k: parts[k]
            for k in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
        },
    )
    pipe.set_progress_bar_config(disable=True)
    engine = Engine(Components(**parts, shift=3.0, is_demo=False), device, dtype)
    print(f"   built in {time.perf_counter() - started:.0f} s", flush=True)

    pose = pose_map(size)
    job = EngineJob(PROMPT, NEGATIVE, steps, GUIDANCE, [SEED], STRENGTH, "dpmpp_2m", "sgm_uniform", size, size, pose)
    noise = initial_noise([SEED], (16, size // 8, size // 8), device)

    def diffusers_run(output_type: str = "pil", **extra) -> object:
        with torch.no_grad():
            return pipe(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                max_sequence_length=77,  # T5 at 77 tokens, as ComfyUI (and we) read a short prompt
                control_image=pose,
                controlnet_conditioning_scale=STRENGTH,
                num_inference_steps=steps,
                guidance_scale=GUIDANCE,
                height=size,
                width=size,
                latents=noise.to(dtype),
                output_type=output_type,
                **extra,
            ).images

    def ours_cold() -> object:
        engine.text.cache.clear()
        engine.control_cache.clear()
        return engine.generate(job)

    def ours_warm() -> object:
        return engine.generate(job)

    # Same noise, same sampler (euler on diffusers' schedule): how close are the results?
    euler = EngineJob(PROMPT, NEGATIVE, steps, GUIDANCE, [SEED], STRENGTH, "euler", "normal", size, size, pose)
    ours_latents = engine.generate_latents(euler)
    ref_latents = diffusers_run("latent").float()
    finite = bool(torch.isfinite(ours_latents).all() and torch.isfinite(ref_latents).all())
    rel = float((ours_latents - ref_latents).norm() / ref_latents.norm())
    ours_img = np.asarray(engine.decode(ours_latents)[0], dtype=np.int16)
    ref_img = np.asarray(diffusers_run()[0], dtype=np.int16)
    pixel_mean = float(np.abs(ours_img - ref_img).mean())
    print(
        f"   ours vs diffusers (euler, same noise): latent relative difference {rel:.2e}, "
        f"mean |pixel difference| {pixel_mean:.2f}/255, finite {finite}",
        flush=True,
    )

    arms = [Arm("diffusers", diffusers_run), Arm("ours cold", ours_cold), Arm("ours warm", ours_warm)]
    measure(arms, args.rounds, device)
    cache_rows = []
    try:
        # A whole request with a photo (pose detection on the CPU included): first time vs again.
        generator, request = photo_request(engine, size, steps) if name == args.dtypes.split(",")[0] else (None, None)
    except Exception as exc:  # e.g. no mediapipe/pydantic on the GPU image: the engine arms still count
        cache_rows.append(f"{name}: whole-request cache arms skipped ({type(exc).__name__}: {exc})")
        generator = None
    if generator is not None:

        def request_first() -> object:
            generator.detector.cache.clear()
            engine.text.cache.clear()
            engine.control_cache.clear()
            return generator.run(request)

        requests = [Arm("request first", request_first), Arm("request repeat", lambda: generator.run(request))]
        measure(requests, args.rounds, device)
        ratio = statistics.median(b / a for a, b in zip(requests[0].times, requests[1].times, strict=True))
        stages = ", ".join(f"{k} {v:.3f} s" for k, v in request_first().timings.items())
        first, again = (statistics.median(arm.times) for arm in requests)
        cache_rows.append(
            f"{name}: whole request (512 px photo -> pose -> {size}x{size}, {steps} steps -> JPEG): first "
            f"{first:.3f} s, same request again {again:.3f} s, repeat/first {ratio:.3f} (median of per-round "
            f"ratios; target <= 0.85); first-time stages: {stages}"
        )
        print(f"   {cache_rows[-1]}", flush=True)
    compile_note = ""
    want_compile = name in args.compile_dtypes.split(",") and not args.no_compile
    if want_compile and time.perf_counter() + args.compile_budget_s > deadline:
        compile_note = f"compile skipped for {name}: less than {args.compile_budget_s:.0f} s of the time budget left"
        want_compile = False
    if want_compile:
        print(f"   compiling ours ({args.compile_backend}, mode {args.compile_mode or 'default'})...", flush=True)
        compile_started = time.perf_counter()
        try:
            engine.compile(backend=args.compile_backend, mode=args.compile_mode)
            compile_note = f"compile + warm-up took {time.perf_counter() - compile_started:.0f} s at start-up"
            print(f"   {compile_note}", flush=True)
            compiled = Arm("ours compiled cold", ours_cold)
            reference_arm = Arm("diffusers", diffusers_run)
            measure([reference_arm, compiled], args.rounds, device)
            # Ratios against diffusers measured in the same alternating run as the compiled arm.
            compiled.times_reference = reference_arm.times  # type: ignore[attr-defined]
            arms.append(compiled)
        except Exception as exc:  # the eager numbers above still count
            compile_note = f"the compiled arm failed after {time.perf_counter() - compile_started:.0f} s: " + (
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            print(f"   {compile_note}", flush=True)

    base = arms[0].times
    rows = []
    verdicts = []
    for arm in arms:
        reference = getattr(arm, "times_reference", base)
        median = statistics.median(arm.times)
        speedup = statistics.median(r / t for r, t in zip(reference, arm.times, strict=True))
        runs = ", ".join(f"{t:.3f}" for t in arm.times)
        peak = f"{arm.peak_gb:.1f} ({arm.own_gb:.1f})" if device.type == "cuda" else "n/a"
        rows.append(f"| {name} | {arm.name} | {median:.3f} | {speedup:.2f}x | {peak} | {runs} |")
        if arm.name.endswith("cold") and arm.name != "diffusers":
            met = median <= TARGET_S_PER_IMAGE and speedup >= TARGET_SPEEDUP
            verdicts.append(
                f"{name}, {arm.name}: {median:.3f} s/image, {speedup:.2f}x -> targets (<= {TARGET_S_PER_IMAGE:g} s "
                f"on an H100, >= {TARGET_SPEEDUP:g}x) {'met' if met else 'NOT met'}"
            )
        print(f"   {arm.name:<20} {median:.3f} s/image   {speedup:.2f}x vs diffusers   peak {peak} GB", flush=True)
    # Half precision keeps ~3 significant digits; 20 steps through ~30 blocks with differently
    # ordered (fused) products drift by about 1e-2 relative (the CPU smoke run shows 1e-3..2e-2).
    match = finite and rel <= LATENT_RTOL_HALF and pixel_mean <= PIXEL_MEAN_TOL_HALF
    notes = cache_rows + [
        f"{name}: ours vs diffusers from the same noise (euler): latent relative difference {rel:.1e}, "
        f"mean absolute pixel difference {pixel_mean:.2f}/255, all finite: {finite} -> "
        f"{'within' if match else 'NOT within'} the half-precision tolerance (relative {LATENT_RTOL_HALF:g}, "
        f"mean pixel {PIXEL_MEAN_TOL_HALF:g}/255)"
    ]
    if compile_note:
        notes.append(f"{name}: {compile_note}")
    notes += verdicts
    return rows + ["NOTE " + n for n in notes]


def write_results(path: Path, text: str) -> None:
    """Replace the GPU section of the results file (or append one)."""
    section = f"{START_MARK}\n{text.rstrip()}\n{END_MARK}"
    old = path.read_text() if path.exists() else ""
    if START_MARK in old and END_MARK in old:
        new = re.sub(re.escape(START_MARK) + ".*?" + re.escape(END_MARK), lambda _: section, old, flags=re.S)
    else:
        new = old.rstrip() + ("\n\n" if old else "") + section + "\n"
    path.write_text(new)
    print(f"\nresults written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy scale on the CPU, to check the script")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--dtypes", default="bf16,fp16", help="in order; the first gets the compiled arm first")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5; 2 with --smoke)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-dtypes", default="bf16", help="dtypes that also get the compiled arm")
    parser.add_argument("--compile-backend", default=None, help="default inductor (eager with --smoke)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-budget-s", type=float, default=180.0, help="skip compiling with less time left")
    parser.add_argument("--budget-s", type=float, default=450.0, help="the whole run's time budget")
    parser.add_argument("--dtype-budget-s", type=float, default=100.0, help="skip a further dtype with less left")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    deadline = started + args.budget_s
    config = SMOKE if args.smoke else SD3_MEDIUM
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for the CPU toy-scale check")
    args.rounds = args.rounds or (2 if args.smoke else 5)
    args.compile_backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both sides; matters only for fp32 parts
    print(versions(device), flush=True)

    rows: list[str] = []
    for name in args.dtypes.split(","):
        if rows and time.perf_counter() > deadline - args.dtype_budget_s:
            rows.append(f"NOTE {name}: skipped, less than {args.dtype_budget_s:.0f} s of the time budget left")
            write_results(args.results, report(rows, config, args, device, started))
            continue
        try:
            rows += run_dtype(name, config, args, device, deadline)
        except Exception as exc:  # keep what the other dtypes measured
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            rows.append(f"NOTE {name}: failed with {type(exc).__name__}: {first_line}")
            print(f"{name} failed:", flush=True)
            traceback.print_exc()
        gc.collect()  # the dtype's models are unreachable now: free them before the next build
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # Written after every dtype: a run cut off at the device's time limit keeps what it measured.
        write_results(args.results, report(rows, config, args, device, started))


def report(rows: list[str], config: dict, args: argparse.Namespace, device: torch.device, started: float) -> str:
    """The GPU section of RESULTS.md from the rows measured so far."""
    table = [r for r in rows if not r.startswith("NOTE ")]
    notes = [r.removeprefix("NOTE ") for r in rows if r.startswith("NOTE ")]
    scale = "SD3 Medium size"
    if args.smoke:
        scale = "TOY SCALE (--smoke): not a GPU result, only proof that the script runs"
    text = "\n".join(
        [
            f"### bench/gpu.py — {scale}",
            "",
            f"- Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {versions(device)}",
            f"- {config['size']}x{config['size']}, {config['steps']} steps, guidance {GUIDANCE:g}, ControlNet strength "
            f"{STRENGTH:g}, 1 image; diffusers: its default FlowMatchEuler; ours: dpmpp_2m + sgm_uniform (1 model "
            f"evaluation per step each); {args.rounds} alternating rounds after a warm-up; speed-up = median of "
            "per-round ratios diffusers/ours (the compiled arm against a diffusers arm timed in the same rounds)",
            "",
            "| dtype | arm | s/image (median) | speed-up vs diffusers | peak GPU GB (the run's own) | runs (s) |",
            "|---|---|---|---|---|---|",
            *table,
            "",
            *[f"- {n}" for n in notes],
            f"- total script time {time.perf_counter() - started:.0f} s",
        ]
    )
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
