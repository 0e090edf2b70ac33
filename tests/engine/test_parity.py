"""Our engine against diffusers' own SD3 pipelines on the same folders: the check that makes real weights trustworthy.

The engine reads requests as ComfyUI does; diffusers agrees with it on plain prompts of at most 75
tokens when T5 reads them at 77 tokens (`max_sequence_length=77`), when the pose map's latent is
the VAE posterior's mode rather than a sample, over the whole schedule, and with a CLIP-L
projection that is the identity (the real one's is; the tiny model's too). Those are the cases here.
Tolerances: final latents within 1e-4 relative error (float32 on CPU; what differs is only the order
of float operations, ~1e-6 in practice), decoded images within 1/255 per pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_jobs import job, pose_map, relative_difference

from sd3pose.engine import initial_noise

LATENT_RTOL = 1e-4
T5_LENGTH = 77  # ComfyUI's T5 length for prompts of up to 76 T5 tokens


@pytest.fixture(autouse=True)
def vae_mode_not_sample(monkeypatch):
    """diffusers encodes the pose map with a sample of the VAE posterior; ComfyUI (and we) take its mode."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())


@pytest.fixture(scope="module")
def diffusers_controlnet_pipe(tiny_model_dir):
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    controlnet = SD3ControlNetModel.from_pretrained(tiny_model_dir / "controlnet")
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(tiny_model_dir / "base", controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_tiny_clip_l_projection_is_the_identity(tiny_engine):
    projection = tiny_engine.text.clip_l.model.text_projection.weight
    assert torch.equal(projection, torch.eye(projection.shape[0]))


def reference_latents(pipe, the_job, **extra) -> torch.Tensor:
    """diffusers' result for the job, from the same starting noise (euler + its default 'normal' schedule)."""
    noise = initial_noise(the_job.seeds, (16, the_job.height // 8, the_job.width // 8), torch.device("cpu"))
    # The prompts, unless the caller hands diffusers ready conditioning (prompt_embeds and company).
    prompts = dict(prompt=the_job.prompt, negative_prompt=the_job.negative_prompt, max_sequence_length=T5_LENGTH)
    arguments = dict(
        **({} if "prompt_embeds" in extra else prompts),
        num_inference_steps=the_job.steps,
        guidance_scale=the_job.guidance_scale,
        latents=noise,
        height=the_job.height,
        width=the_job.width,
        output_type="latent",
    )
    arguments.update(extra)
    if hasattr(pipe, "controlnet"):
        arguments.update(
            control_image=the_job.control_image,
            controlnet_conditioning_scale=the_job.strength,
            control_guidance_start=the_job.control_start,
            control_guidance_end=the_job.control_end,
        )
    with torch.no_grad():
        return pipe(**arguments).images


def decode_like_diffusers(pipe, latents: torch.Tensor) -> np.ndarray:
    config = pipe.vae.config
    with torch.no_grad():
        pixels = pipe.vae.decode(latents / config.scaling_factor + config.shift_factor, return_dict=False)[0]
    images = pipe.image_processor.postprocess(pixels, output_type="pil")
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


@pytest.mark.parametrize("guidance", [1.0, 7.0])
@pytest.mark.parametrize("strength", [0.0, 0.8])
def test_matches_diffusers_controlnet_pipeline(tiny_engine, diffusers_controlnet_pipe, guidance, strength):
    the_job = job(guidance_scale=guidance, strength=strength, steps=5)
    ours = tiny_engine.generate_latents(the_job)
    reference = reference_latents(diffusers_controlnet_pipe, the_job)
    assert relative_difference(ours, reference) < LATENT_RTOL

    our_images = np.stack([np.asarray(image, dtype=np.int16) for image in tiny_engine.decode(ours)])
    reference_images = decode_like_diffusers(diffusers_controlnet_pipe, reference)
    assert our_images.shape == (1, 64, 64, 3)
    assert np.abs(our_images - reference_images).max() <= 1


def test_without_t5_the_context_is_the_clip_tokens_alone(tiny_model_dir):
    """No T5: diffusers' pipeline given only the CLIP part of its own prompt encoding (no T5 zeros) agrees."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    from sd3pose.engine import Engine

    engine = Engine.load(tiny_model_dir / "base", tiny_model_dir / "controlnet", device="cpu", use_t5=False)
    assert engine.text.t5 is None
    controlnet = SD3ControlNetModel.from_pretrained(tiny_model_dir / "controlnet")
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(
        tiny_model_dir / "base", controlnet=controlnet, text_encoder_3=None, tokenizer_3=None
    )
    pipe.set_progress_bar_config(disable=True)

    def clip_only(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tokens_l, pooled_l = pipe._get_clip_prompt_embeds(prompt, device="cpu", clip_model_index=0)
            tokens_g, pooled_g = pipe._get_clip_prompt_embeds(prompt, device="cpu", clip_model_index=1)
        tokens = torch.cat([tokens_l, tokens_g], dim=-1)
        width = pipe.transformer.config.joint_attention_dim
        return torch.nn.functional.pad(tokens, (0, width - tokens.shape[-1])), torch.cat([pooled_l, pooled_g], dim=-1)

    the_job = job(steps=3)
    tokens, pooled = clip_only(the_job.prompt)
    negative_tokens, negative_pooled = clip_only(the_job.negative_prompt)
    assert tokens.shape == (1, 77, 64)
    reference = reference_latents(
        pipe,
        the_job,
        prompt_embeds=tokens,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative_tokens,
        negative_pooled_prompt_embeds=negative_pooled,
    )
    assert relative_difference(engine.generate_latents(the_job), reference) < LATENT_RTOL


def test_strength_zero_is_plain_sd3(tiny_engine, tiny_model_dir):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_model_dir / "base")
    pipe.set_progress_bar_config(disable=True)
    the_job = job(strength=0.0, steps=4)
    ours = tiny_engine.generate_latents(the_job)
    assert relative_difference(ours, reference_latents(pipe, the_job)) < LATENT_RTOL
    # With strength 0 the pose map is irrelevant; with strength > 0 a different pose map changes the result.
    other_pose = pose_map(seed=7)
    assert torch.equal(tiny_engine.generate_latents(dataclasses.replace(the_job, control_image=other_pose)), ours)
    posed = dataclasses.replace(the_job, strength=0.8)
    assert (
        relative_difference(
            tiny_engine.generate_latents(dataclasses.replace(posed, control_image=other_pose)),
            tiny_engine.generate_latents(posed),
        )
        > 1e-2
    )
