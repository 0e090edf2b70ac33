"""The caches change speed only: a cache hit gives exactly what a miss computes."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from perf_helpers import decoded_pixels, png_base64
from tiny_jobs import job, pose_map

from sd3pose.cache import LruCache, image_digest


def test_lru_cache_keeps_the_most_recently_used():
    cache: LruCache[int] = LruCache(2)
    computed = []

    def value(key: str) -> int:
        return cache.get_or_compute(key, lambda: computed.append(key) or len(computed))

    assert (value("a"), value("b"), value("a")) == (1, 2, 1)
    value("c")  # evicts b, the least recently used
    assert value("a") == 1 and value("b") == 4
    assert computed == ["a", "b", "c", "b"] and len(cache) == 2
    with pytest.raises(ValueError, match="0 or more"):
        LruCache(-1)


def test_image_digest_follows_pixels_not_identity():
    image = pose_map(seed=1)
    assert image_digest(image) == image_digest(image.copy())
    changed = image.copy()
    changed.putpixel((0, 0), (1, 2, 3))
    assert image_digest(changed) != image_digest(image)
    assert image_digest(image.convert("RGBA")) != image_digest(image)


def test_prompt_cache_hit_equals_fresh_encoding(tiny_engine):
    text = tiny_engine.text
    text.cache.clear()
    fresh = text.encode("a yoga pose on the beach")
    hits = text.cache.hits
    again = text.encode("a yoga pose on the beach")
    assert text.cache.hits == hits + 1 and again is fresh
    text.cache.clear()
    recomputed = text.encode("a yoga pose on the beach")
    assert torch.equal(recomputed.tokens, fresh.tokens) and torch.equal(recomputed.pooled, fresh.pooled)
    other = text.encode("a yoga pose in the snow")
    assert not torch.equal(other.tokens, fresh.tokens)  # the key is the prompt, not a constant


def test_control_latent_cache_is_keyed_by_content_and_size(tiny_engine):
    tiny_engine.control_cache.clear()
    first = tiny_engine.encode_control(pose_map(seed=2), 64, 64)
    hits = tiny_engine.control_cache.hits
    again = tiny_engine.encode_control(pose_map(seed=2), 64, 64)  # a new but identical image: a hit
    assert again is first and tiny_engine.control_cache.hits == hits + 1
    tiny_engine.control_cache.clear()
    assert torch.equal(tiny_engine.encode_control(pose_map(seed=2), 64, 64), first)
    assert tiny_engine.encode_control(pose_map(seed=2), 96, 64).shape[-1] == 12  # other size: its own entry
    assert not torch.equal(tiny_engine.encode_control(pose_map(seed=3), 64, 64), first)


def test_generation_with_warm_caches_equals_cold(tiny_engine):
    the_job = job(prompt="a runner in the park", control_image=pose_map(seed=8))
    tiny_engine.text.cache.clear()
    tiny_engine.control_cache.clear()
    cold = tiny_engine.generate_latents(the_job)
    misses = tiny_engine.text.cache.misses
    warm = tiny_engine.generate_latents(the_job)
    assert tiny_engine.text.cache.misses == misses  # prompt and negative prompt both hit
    assert torch.equal(warm, cold)


@pytest.fixture(scope="module")
def photo() -> PIL.Image.Image:
    from skimage import data

    return PIL.Image.fromarray(data.astronaut()).resize((256, 256))


def test_pose_cache_hit_gives_the_same_keypoints_and_images(tiny_engine, photo):
    from sd3pose.pipeline import Generator
    from sd3pose.pose.detect import get_detector
    from sd3pose.request import parse_request

    generator = Generator(tiny_engine, detector=get_detector())
    cache = generator.detector.cache
    request = parse_request(
        {
            "image": png_base64(photo),
            "prompt": "an astronaut",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "sampler": "euler",
            "scheduler": "normal",
            "return_pose": True,
            "output_format": "png",
        }
    )
    first = generator.run(request)
    assert cache.misses == 1 and cache.hits == 0
    second = generator.run(request)
    assert cache.misses == 1 and cache.hits == 1
    assert second.keypoints == first.keypoints and first.keypoints["people"]  # somebody was detected
    assert np.array_equal(decoded_pixels(second.images), decoded_pixels(first.images))
    # The cache hands out copies: editing one result's pose cannot leak into the next request.
    pose = generator.detector.detect(photo.convert("RGB"))
    pose.people.clear()
    assert generator.detector.detect(photo.convert("RGB")).people
