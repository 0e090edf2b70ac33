"""diffusers' SD3 pipelines called the way ComfyUI reads a request, so their latents are our engine's reference.

They agree on plain prompts of at most 75 tokens when T5 reads them at 77 tokens, when the pose
map's latent is the VAE posterior's mode rather than a sample, and with a CLIP-L projection that is
the identity (the real one's is). Without T5 the context is the CLIP tokens alone (no T5 zeros).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from sd3pose.engine import initial_noise

T5_LENGTH = 77  # ComfyUI's T5 length for prompts of up to 76 T5 tokens


@contextmanager
def vae_mode_not_sample() -> Iterator[None]:
    """diffusers encodes the pose map with a sample of the VAE posterior; ComfyUI (and we) take its mode."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
        yield


def clip_only_conditioning(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own CLIP encoding of `prompt` without the T5 part: (context, pooled)."""
    device = pipe.transformer.device
    with torch.no_grad():
        tokens_l, pooled_l = pipe._get_clip_prompt_embeds(prompt, device=device, clip_model_index=0)
        tokens_g, pooled_g = pipe._get_clip_prompt_embeds(prompt, device=device, clip_model_index=1)
    tokens = torch.cat([tokens_l, tokens_g], dim=-1)
    width = pipe.transformer.config.joint_attention_dim
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[-1])), torch.cat([pooled_l, pooled_g], dim=-1)


def clip_only_arguments(pipe, the_job) -> dict[str, torch.Tensor]:
    """The pipeline's conditioning arguments for a job run without T5."""
    tokens, pooled = clip_only_conditioning(pipe, the_job.prompt)
    negative_tokens, negative_pooled = clip_only_conditioning(pipe, the_job.negative_prompt)
    return dict(
        prompt_embeds=tokens,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative_tokens,
        negative_pooled_prompt_embeds=negative_pooled,
    )


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
    with vae_mode_not_sample(), torch.no_grad():
        return pipe(**arguments).images
