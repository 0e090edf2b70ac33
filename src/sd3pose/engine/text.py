"""SD3 prompt encoding with CLIP-L, CLIP-G and (optionally) T5, as ComfyUI (v0.12.1) encodes prompts.

Per prompt SD3 needs two tensors:
- the token states: CLIP-L's and CLIP-G's penultimate hidden states side by side, one 77-token
  window after another (a long prompt is read whole, see `token_windows`), zero-padded to the
  joint width; then T5's states for the whole prompt (at least 77 tokens). Without T5 the
  context is the CLIP tokens alone.
- the pooled vector: CLIP-L's final state at the first window's end token (not projected, as in
  SD3's reference code; the real CLIP-L projection is the identity anyway) beside CLIP-G's
  projected one.

Emphasis (``(word:1.3)``, see `prompt_syntax`): each encoder reads the prompt's token ids
unweighted; a token of weight w then moves away from the empty prompt's state at the same
position: ``state = empty + w * (state - empty)``. The pooled vectors are not weighted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sd3pose.cache import LruCache
from sd3pose.engine.token_windows import WindowLayout, token_windows
from sd3pose.prompt_syntax import WeightedPiece, parse_prompt, tokenizer_words

logger = logging.getLogger(__name__)

# Each entry is one prompt's (1, 77 + T5 tokens, 4096) states: ~1.3 MB in bf16 for a short prompt on SD3 Medium.
DEFAULT_PROMPT_CACHE_SIZE = 32


@dataclass
class PromptEmbeds:
    """One prompt's conditioning: tokens (1, sequence, joint_dim) and pooled (1, pooled_dim)."""

    tokens: torch.Tensor
    pooled: torch.Tensor


@dataclass
class _Encoded:
    states: torch.Tensor  # (1, windows * window length, width), float32, weights applied
    pooled: torch.Tensor | None  # (1, width) from the first window, float32; None for T5
    windows: int


class _TextEncoder:
    """One transformers text encoder with its tokenizer and window layout.

    `pooled` says what the encoder contributes besides its states: None for T5 (whose states are
    its output), else a CLIP whose states are its penultimate layer's, pooling its final state at the
    end token "plain" or "projected" through its text projection.
    """

    def __init__(self, tokenizer, model, layout: WindowLayout, pooled: str | None) -> None:
        self.tokenizer, self.model, self.layout = tokenizer, model, layout
        self.pooled = pooled

    def encode(self, pieces: tuple[WeightedPiece, ...], device: torch.device) -> _Encoded:
        windows = token_windows(self.tokenizer, pieces, self.layout)
        weighted = any(weight != 1.0 for window in windows for _, weight in window)
        rows = [[token for token, _ in window] for window in windows]
        if weighted:  # the empty prompt, read in the same batch, is what weights interpolate from
            rows.append(self.layout.empty(max(len(row) for row in rows)))
        ids = torch.tensor(rows, dtype=torch.long, device=device)
        if self.pooled is None:
            out = self.model(ids)
            states = out.last_hidden_state.float()
            pooled = None
        else:
            out = self.model(ids, output_hidden_states=True)
            states = out.hidden_states[-2].float()
            pooled = self._pooled(out.last_hidden_state[:1], ids[:1])
        if weighted:
            empty, states = states[-1:], states[:-1]
            weights = torch.tensor([[w for _, w in window] for window in windows], device=device)
            weights = weights.unsqueeze(-1)
            states = torch.where(weights != 1.0, (states - empty) * weights + empty, states)
        return _Encoded(states.reshape(1, -1, states.shape[-1]), pooled, len(windows))

    def _pooled(self, last_states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        # The state at the first end token of the first window (where CLIP's causal attention has read it all).
        position = int((ids[0] == self.layout.end).int().argmax())
        pooled = last_states[:, position]
        if self.pooled == "projected":
            pooled = self.model.text_projection(pooled)
        return pooled.float()


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
        self.clip_l = _TextEncoder(tokenizer, text_encoder, WindowLayout.clip(tokenizer), "plain")
        self.clip_g = _TextEncoder(tokenizer_2, text_encoder_2, WindowLayout.clip(tokenizer_2), "projected")
        self.t5 = (
            _TextEncoder(tokenizer_3, text_encoder_3, WindowLayout.t5(tokenizer_3), None)
            if text_encoder_3 is not None
            else None
        )
        self.joint_attention_dim = joint_attention_dim
        self.device, self.dtype = device, dtype
        # The encoders are fixed per instance; the key still names them so a key never means two things.
        self.encoder_set = ("clip_l", "clip_g", "t5" if self.t5 is not None else "no_t5")
        self.cache: LruCache[PromptEmbeds] = LruCache(cache_size)

    @property
    def models(self) -> list[torch.nn.Module]:
        """The text encoders in the order a request runs them: CLIP-L, CLIP-G, then T5 if loaded."""
        encoders = [self.clip_l, self.clip_g] + ([self.t5] if self.t5 is not None else [])
        return [encoder.model for encoder in encoders]

    def encode(self, prompt: str) -> PromptEmbeds:
        """The conditioning of one prompt (an empty string is a valid, unconditional prompt), cached.

        The cache keys on the parsed prompt, so prompts that differ only in how their weights are
        written share an entry; prompt and negative prompt are cached separately, so the default
        negative prompt is encoded once. The returned tensors are shared with the cache: read them,
        never modify them in place.
        """
        pieces, dropped = tokenizer_words(parse_prompt(prompt))
        if dropped:
            logger.warning(
                "prompt: embedding:%s ignored: this server has no textual-inversion embeddings "
                "(ComfyUI also drops an embedding it cannot find); the rest of the prompt is read",
                ", embedding:".join(dropped),
            )
        return self.cache.get_or_compute((pieces, self.encoder_set), lambda: self._encode(pieces))

    @torch.inference_mode()
    def _encode(self, pieces: tuple[WeightedPiece, ...]) -> PromptEmbeds:
        clip_l = self.clip_l.encode(pieces, self.device)
        clip_g = self.clip_g.encode(pieces, self.device)
        length = min(clip_l.states.shape[1], clip_g.states.shape[1])
        clip_states = torch.cat([clip_l.states[:, :length], clip_g.states[:, :length]], dim=-1)
        clip_states = torch.nn.functional.pad(clip_states, (0, self.joint_attention_dim - clip_states.shape[-1]))
        parts = [clip_states]
        t5_note = "no T5"
        if self.t5 is not None:
            t5 = self.t5.encode(pieces, self.device)
            parts.append(t5.states)
            t5_note = f"T5 read it as {t5.states.shape[1]} tokens"
        logger.info(
            "prompt encoded: CLIP read it in %d window(s) of 77 tokens, %s; %d context tokens in all",
            clip_l.windows,
            t5_note,
            sum(part.shape[1] for part in parts),
        )
        tokens = torch.cat(parts, dim=1).to(self.dtype)
        pooled = torch.cat([clip_l.pooled, clip_g.pooled], dim=-1).to(self.dtype)
        return PromptEmbeds(tokens=tokens, pooled=pooled)
