"""Weighted prompt pieces -> token windows, the way ComfyUI (v0.12.1) lays them out for SD3.

CLIP reads 77 tokens at a time, so a long prompt becomes several windows, each
``start, up to 75 tokens, end`` and padded to 77; the encoder reads every window and their
token states are concatenated. How the tokens are packed:

- each weighted piece is tokenized on its own (without the tokenizer's special tokens);
- a piece of fewer than 8 tokens is never split across windows: when it does not fit in the
  current window, that window is closed (end token, then padding) and the piece starts the next;
- a piece of 8 tokens or more fills the current window to the last free place and continues in
  the next one (a plain prompt is one piece, so it is cut exactly every 75 tokens).

T5 reads everything in one window: the tokens, its end token, padded to at least 77 tokens; never
truncated. Every token carries the weight of the piece it came from; special and padding tokens
weigh 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from sd3pose.prompt_syntax import WeightedPiece

CLIP_WINDOW = 77
T5_MIN_LENGTH = 77
UNSPLIT_PIECE_TOKENS = 8  # pieces shorter than this stay whole within one window

Window = list[tuple[int, float]]  # (token id, weight)


@dataclass(frozen=True)
class WindowLayout:
    """How one text encoder's token windows are framed.

    `window` is the fixed window length (None: one window of any length); `start`/`end` are the
    special token ids that frame each window (None: that token is not used); `pad` fills windows
    up to `window` or `min_length`.
    """

    start: int | None
    end: int | None
    pad: int
    window: int | None
    min_length: int = 0

    @classmethod
    def clip(cls, tokenizer) -> WindowLayout:
        """CLIP-L and CLIP-G: start and end tokens, padded with the tokenizer's pad token to 77.

        SD3's CLIP-L tokenizer pads with its end token and CLIP-G's with "!" (id 0), as ComfyUI does.
        """
        return cls(
            start=tokenizer.bos_token_id, end=tokenizer.eos_token_id, pad=tokenizer.pad_token_id, window=CLIP_WINDOW
        )

    @classmethod
    def t5(cls, tokenizer) -> WindowLayout:
        """T5: no start token, the end token, padded with the pad token to at least 77 tokens."""
        return cls(
            start=None, end=tokenizer.eos_token_id, pad=tokenizer.pad_token_id, window=None, min_length=T5_MIN_LENGTH
        )

    def empty(self, length: int) -> list[int]:
        """The empty prompt's token ids at `length`: what weighted tokens are interpolated from."""
        ids = [token for token in (self.start, self.end) if token is not None]
        return ids + [self.pad] * (length - len(ids))


def token_windows(tokenizer, pieces: tuple[WeightedPiece, ...], layout: WindowLayout) -> list[Window]:
    """The weighted token windows of a parsed prompt (at least one, even for an empty prompt)."""
    framing = 1 if layout.end is not None else 0  # the place the end token takes in every window
    head = [(layout.start, 1.0)] if layout.start is not None else []
    windows: list[Window] = [list(head)]
    for text, weight in pieces:
        # verbose=False: no "longer than the maximum length" warning; windows make room for any length.
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        splittable = len(ids) >= UNSPLIT_PIECE_TOKENS
        while ids:
            current = windows[-1]
            room = len(ids) if layout.window is None else layout.window - framing - len(current)
            if len(ids) <= room:
                current.extend((token, weight) for token in ids)
                break
            if splittable:
                current.extend((token, weight) for token in ids[:room])
                ids = ids[room:]
                _close(current, layout, pad=False)
            else:
                _close(current, layout, pad=True)
            windows.append(list(head))
    last = windows[-1]
    _close(last, layout, pad=True)
    if len(last) < layout.min_length:
        last.extend([(layout.pad, 1.0)] * (layout.min_length - len(last)))
    return windows


def _close(window: Window, layout: WindowLayout, *, pad: bool) -> None:
    if layout.end is not None:
        window.append((layout.end, 1.0))
    if pad and layout.window is not None:
        window.extend([(layout.pad, 1.0)] * (layout.window - len(window)))
