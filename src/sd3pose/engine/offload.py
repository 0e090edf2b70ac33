"""Model CPU offload (`--offload`) for GPUs with less memory than the whole model needs.

Accelerate's hooks, set as diffusers' `enable_model_cpu_offload` sets them: every model waits in main
memory and moves to the GPU when its forward runs (the VAE's encode and decode count, through
diffusers' own hook on them); running a model sends the one before it in the chain back to main
memory. The chain follows a request: CLIP-L -> CLIP-G -> T5 -> (ControlNet, transformer) -> VAE.
The text encoders form a ring (CLIP-L sends T5 back), because they run once for the prompt and
again for a negative prompt that is not cached. The ControlNet and the transformer run in turn at
every step, so both send back only the last text encoder and stay on the GPU together until the
request ends (chaining one after the other would move one of them twice per step); the VAE's decode
then sends the transformer back. `release` returns every model to main memory when a request (or
one model batch of a merged request list) ends, so the next one starts with an empty GPU.

At worst the GPU then holds T5 and the VAE (9.7 GB in bf16), or the transformer, ControlNet and
VAE (5.5 GB), instead of all 16.7 GB (`sd3pose.engine.memory`). The price is the transfers: about
5.5 GB moved to the GPU per request, plus each text encoder when its prompt is not cached.
Nothing here can run without a GPU; the CPU tests check the chain and that results are unchanged.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class ModelOffload:
    """The offload hooks of one engine's models, and `release` to send them all back to main memory."""

    def __init__(
        self,
        *,
        text_encoders: list[torch.nn.Module],
        controlnet: torch.nn.Module,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        device: torch.device,
    ) -> None:
        from accelerate import cpu_offload_with_hook

        if device.type == "cuda" and device.index is None:
            # The hooks skip the move when a model is already on the device, compared with its index.
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.hooks = []
        previous = None
        for encoder in text_encoders:
            _, previous = cpu_offload_with_hook(encoder, device, prev_module_hook=previous)
            self.hooks.append(previous)
        # The ring: without it the negative prompt's CLIP-G would join T5 on the GPU (10.9 GB in bf16).
        self.hooks[0].hook.prev_module_hook = previous
        _, control_hook = cpu_offload_with_hook(controlnet, device, prev_module_hook=previous)
        _, transformer_hook = cpu_offload_with_hook(transformer, device, prev_module_hook=previous)
        _, vae_hook = cpu_offload_with_hook(vae, device, prev_module_hook=transformer_hook)
        self.hooks += [control_hook, transformer_hook, vae_hook]
        logger.info("model CPU offload on: each model moves to %s when it runs, and back after", device)

    def release(self) -> None:
        """Every model back to main memory (the end of a request)."""
        for hook in self.hooks:
            hook.offload()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
