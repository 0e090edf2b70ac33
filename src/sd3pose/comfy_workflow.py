"""A request as the equivalent ComfyUI (v0.12.1) workflow, in ComfyUI's API format.

The graph is the hosted service's workflow: SD3 Medium, its three text encoders, the InstantX pose
ControlNet applied with the VAE, an empty SD3 latent, KSampler, VAEDecode, SaveImage. The pose map
is a LoadImage input (a PNG the user copies into ComfyUI's input/ folder), the model files are
parameters, and every sample gets its own KSampler with seed + i, so each image equals sd3pose's
(ComfyUI itself draws a batch's noise from one seed, which would give other images after the
first). Queue it with ComfyUI's HTTP API (POST /prompt with {"prompt": workflow}) or drop the file
on ComfyUI's page.

No HTTP and no models here: the CLI (`sd3pose comfy-workflow`) and the server's
POST /v1/comfy-workflow both build the graph with `comfy_workflow`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sd3pose.request import GenerationRequest
from sd3pose.sampling.names import SAMPLER_ALIASES

# ComfyUI spells some samplers differently; everything else is spelt the same.
COMFY_SAMPLER_NAMES = {ours: comfy for comfy, ours in SAMPLER_ALIASES.items()}


@dataclass(frozen=True)
class ModelFiles:
    """The file names the workflow's loaders ask for, as they are in the user's ComfyUI models/ folders.

    `checkpoint` (models/checkpoints) holds SD3 Medium's MMDiT and VAE; the text encoders are in
    models/text_encoders (`t5` None: CLIP-L and CLIP-G only, as sd3pose runs with --no-t5); the
    ControlNet (models/controlnet) is InstantX/SD3-Controlnet-Pose's diffusion_pytorch_model.safetensors.
    """

    checkpoint: str = "sd3_medium.safetensors"
    clip_l: str = "clip_l.safetensors"
    clip_g: str = "clip_g.safetensors"
    t5: str | None = "t5xxl_fp16.safetensors"
    controlnet: str = "instantx_sd3_controlnet_pose.safetensors"


def pose_image_name(png: bytes) -> str:
    """The LoadImage file name for a pose map: named by its content, so two pose maps never collide."""
    return f"sd3pose_pose_{hashlib.sha256(png).hexdigest()[:16]}.png"


def comfy_workflow(
    request: GenerationRequest, *, width: int, height: int, pose_image: str, files: ModelFiles | None = None
) -> dict[str, dict[str, Any]]:
    """The API-format graph ({node id: {class_type, inputs, _meta}}) that makes this request's images.

    `width`/`height` are the generation size (the pose map's); `pose_image` is the pose map's file
    name in ComfyUI's input/ folder. The request's seed must be resolved (not -1).
    """
    if request.seed < 0:
        raise ValueError("resolve the random seed first (GenerationRequest.with_seed_resolved)")
    files = files or ModelFiles()
    graph = _Graph()
    checkpoint = graph.add("CheckpointLoaderSimple", "SD3 Medium (MMDiT + VAE)", ckpt_name=files.checkpoint)
    model, vae = [checkpoint, 0], [checkpoint, 2]
    if files.t5 is not None:
        clip = graph.add(
            "TripleCLIPLoader",
            "CLIP-L, CLIP-G, T5",
            clip_name1=files.clip_l,
            clip_name2=files.clip_g,
            clip_name3=files.t5,
        )
    else:
        clip = graph.add(
            "DualCLIPLoader", "CLIP-L, CLIP-G (no T5)", clip_name1=files.clip_l, clip_name2=files.clip_g, type="sd3"
        )
    positive = graph.add("CLIPTextEncode", "Prompt", text=request.prompt, clip=[clip, 0])
    negative = graph.add("CLIPTextEncode", "Negative prompt", text=request.negative_prompt, clip=[clip, 0])
    controlnet = graph.add("ControlNetLoader", "InstantX SD3 pose ControlNet", control_net_name=files.controlnet)
    pose = graph.add("LoadImage", "Pose map (from sd3pose)", image=pose_image)
    control = graph.add(
        "ControlNetApplyAdvanced",
        "Apply the pose",
        positive=[positive, 0],
        negative=[negative, 0],
        control_net=[controlnet, 0],
        image=[pose, 0],
        strength=request.strength,
        start_percent=request.control_start,
        end_percent=request.control_end,
        vae=vae,
    )
    latent = graph.add("EmptySD3LatentImage", "Empty latent", width=width, height=height, batch_size=1)
    for seed in request.seeds:
        sampled = graph.add(
            "KSampler",
            f"Sample (seed {seed})",
            model=model,
            seed=seed,
            steps=request.num_inference_steps,
            cfg=request.guidance_scale,
            sampler_name=COMFY_SAMPLER_NAMES.get(request.sampler, request.sampler),
            scheduler=request.scheduler,
            positive=[control, 0],
            negative=[control, 1],
            latent_image=[latent, 0],
            denoise=1.0,
        )
        decoded = graph.add("VAEDecode", f"Decode (seed {seed})", samples=[sampled, 0], vae=vae)
        graph.add("SaveImage", f"Save (seed {seed})", images=[decoded, 0], filename_prefix=f"sd3pose_seed_{seed}")
    return graph.nodes


class _Graph:
    """Nodes numbered "1", "2", ... in the order added; an input [node id, output index] is a link."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, class_type: str, title: str, **inputs: Any) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return node_id
