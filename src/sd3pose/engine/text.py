"""SD3 prompt encoding: CLIP-L + CLIP-G (+ T5, or its zeros), exactly as diffusers' SD3 pipelines do it.

Per prompt SD3 needs two tensors:
- the token sequence: CLIP-L and CLIP-G penultimate hidden states side by side (77 tokens), zero-padded
  to T5's width, followed by T5's 256 token states (zeros when T5 is not loaded);
- the pooled vector: the two CLIP projections side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sd3pose.cache import LruCache

logger = logging.getLogger(__name__)

T5_MAX_LENGTH = 256  # diffusers' default max_sequence_length for SD3
# Each entry is one prompt's (1, 333, 4096) tokens: ~2.7 MB in bf16 for SD3 Medium.
DEFAULT_PROMPT_CACHE_SIZE = 32


@dataclass
class PromptEmbeds:
    """One prompt's conditioning: tokens (1, 77 + 256, joint_dim) and pooled (1, pooled_dim)."""

    tokens: torch.Tensor
    pooled: torch.Tensor


class PromptEncoder:
    """Turns prompt strings into SD3 conditioning with the loaded text encoders."""

    def __init__(
        self,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        text_encoder_3,
        tokenizer_3,
        joint_attention_dim: int,
        device: torch.device,
        dtype: torch.dtype,
        cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
    ) -> None:
        self.clips = [(tokenizer, text_encoder), (tokenizer_2, text_encoder_2)]
        self.t5 = (tokenizer_3, text_encoder_3) if text_encoder_3 is not None else None
        self.joint_attention_dim = joint_attention_dim
        self.device, self.dtype = device, dtype
        # The encoders are fixed per instance; the key still names them so a key never means two things.
        self.encoder_set = ("clip_l", "clip_g", "t5" if self.t5 is not None else "no_t5")
        self.cache: LruCache[PromptEmbeds] = LruCache(cache_size)

    def _ids(self, tokenizer, prompt: str, max_length: int) -> torch.Tensor:
        ids = tokenizer(
            [prompt], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids
        full_length = len(tokenizer(prompt).input_ids)
        if full_length > max_length:
            logger.warning(
                "the prompt is %d tokens long; its text encoder reads only the first %d", full_length, max_length
            )
        return ids.to(self.device)

    def _clip(self, index: int, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer, encoder = self.clips[index]
        out = encoder(self._ids(tokenizer, prompt, tokenizer.model_max_length), output_hidden_states=True)
        # SD3 reads the penultimate layer; the pooled vector is the projected end-of-text state.
        return out.hidden_states[-2].to(self.dtype), out[0]

    def _t5(self, prompt: str) -> torch.Tensor:
        if self.t5 is None:
            # SD3's own path without T5: its features are zeros.
            return torch.zeros((1, T5_MAX_LENGTH, self.joint_attention_dim), device=self.device, dtype=self.dtype)
        tokenizer, encoder = self.t5
        return encoder(self._ids(tokenizer, prompt, T5_MAX_LENGTH))[0].to(self.dtype)

    def encode(self, prompt: str) -> PromptEmbeds:
        """The conditioning of one prompt (an empty string is a valid, unconditional prompt), cached.

        Prompt and negative prompt are cached separately, so the default negative prompt is encoded once.
        The returned tensors are shared with the cache: read them, never modify them in place.
        """
        return self.cache.get_or_compute((prompt, self.encoder_set), lambda: self._encode(prompt))

    @torch.inference_mode()
    def _encode(self, prompt: str) -> PromptEmbeds:
        tokens_l, pooled_l = self._clip(0, prompt)
        tokens_g, pooled_g = self._clip(1, prompt)
        clip_tokens = torch.cat([tokens_l, tokens_g], dim=-1)
        t5_tokens = self._t5(prompt)
        clip_tokens = torch.nn.functional.pad(clip_tokens, (0, t5_tokens.shape[-1] - clip_tokens.shape[-1]))
        tokens = torch.cat([clip_tokens, t5_tokens], dim=-2)
        pooled = torch.cat([pooled_l, pooled_g], dim=-1).to(self.dtype)
        return PromptEmbeds(tokens=tokens, pooled=pooled)
