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
from diffusers_reference import clip_only_arguments, reference_latents
from tiny_jobs import job, pose_map, relative_difference

LATENT_RTOL = 1e-4


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

    the_job = job(steps=3)
    arguments = clip_only_arguments(pipe, the_job)
    assert arguments["prompt_embeds"].shape == (1, 77, 64)
    reference = reference_latents(pipe, the_job, **arguments)
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
