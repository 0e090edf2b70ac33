"""Sampler x scheduler pairs whose ComfyUI formula misbehaves on SD3's flow model (placeholder)."""

FLAG_RATIO = 3.0
FLAG_FLOOR = 0.02
MISBEHAVING: dict[tuple[str, str], tuple[int, ...]] = {}
