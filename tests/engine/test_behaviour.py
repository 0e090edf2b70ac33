"""What a user of the engine relies on: every knob matters, batches are seed-invariant, progress and cancel work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_jobs import job, pose_map, relative_difference

from sd3pose.errors import GenerationCancelledError

# Each knob must move the final latents by clearly more than float noise (~1e-6).
CHANGES = {
    "prompt": {"prompt": "an astronaut sitting on the moon"},
    "negative prompt": {"negative_prompt": "blurry, ugly"},
    "guidance": {"guidance_scale": 3.0},
    "pose map": {"control_image": pose_map(seed=11)},
    "strength": {"strength": 0.4},
    "seed": {"seeds": [1]},
}


@pytest.fixture(scope="module")
def base_latents(tiny_engine):
    return tiny_engine.generate_latents(job())


@pytest.mark.parametrize("knob", list(CHANGES))
def test_each_knob_changes_the_latents(tiny_engine, base_latents, knob):
    changed = tiny_engine.generate_latents(job(**CHANGES[knob]))
    assert relative_difference(changed, base_latents) > 1e-2


def test_same_job_is_reproducible(tiny_engine, base_latents):
    assert torch.equal(tiny_engine.generate_latents(job()), base_latents)


def test_negative_prompt_is_unused_without_guidance(tiny_engine):
    # At guidance 1 there is no unconditional pass, so the negative prompt cannot matter.
    first = tiny_engine.generate_latents(job(guidance_scale=1.0))
    second = tiny_engine.generate_latents(job(guidance_scale=1.0, negative_prompt="something else entirely"))
    assert torch.equal(first, second)


def test_cfg_pp_samplers_use_the_negative_prompt_even_at_guidance_one(tiny_engine):
    # ComfyUI's CFG++ samplers take their noise direction from the unconditional prediction at any cfg.
    first = tiny_engine.generate_latents(job(guidance_scale=1.0, sampler="euler_pp"))
    second = tiny_engine.generate_latents(
        job(guidance_scale=1.0, sampler="euler_pp", negative_prompt="something else entirely")
    )
    assert not torch.allclose(first, second, atol=1e-4)


@pytest.mark.parametrize(
    ("sampler", "guidance"), [("euler", 7.0), ("euler_ancestral", 7.0), ("dpm_adaptive", 7.0), ("dpm_adaptive", 1.0)]
)
def test_sample_i_of_a_batch_equals_single_request_with_seed_plus_i(tiny_engine, sampler, guidance):
    seed = 4242
    batch_job = job(seeds=[seed, seed + 1, seed + 2], sampler=sampler, steps=3, guidance_scale=guidance)
    batch = tiny_engine.generate_latents(batch_job)
    batch_images = tiny_engine.decode(batch)
    assert batch.shape == (3, 16, 8, 8)
    for i in range(3):
        single = tiny_engine.generate_latents(dataclasses.replace(batch_job, seeds=[seed + i]))
        # Same noise; batched matmuls may round differently in the last bits.
        assert torch.allclose(batch[i], single[0], rtol=0, atol=1e-5)
        single_image = np.asarray(tiny_engine.decode(single)[0], dtype=np.int16)
        assert np.abs(np.asarray(batch_images[i], dtype=np.int16) - single_image).max() <= 1


def test_generate_returns_one_rgb_image_per_seed_at_the_requested_size(tiny_engine):
    images = tiny_engine.generate(job(seeds=[5, 6], width=96, height=64, control_image=pose_map(96, 64)))
    assert [image.size for image in images] == [(96, 64), (96, 64)]
    assert all(image.mode == "RGB" for image in images)


def test_progress_is_reported_once_per_step(tiny_engine):
    calls = []
    tiny_engine.generate(job(steps=4), on_step=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_adaptive_progress_climbs_to_the_total_once_and_only_at_the_end(tiny_engine):
    calls = []
    tiny_engine.generate(
        job(steps=5, seeds=[1, 2], sampler="dpm_adaptive"), on_step=lambda done, total: calls.append((done, total))
    )
    done = [d for d, _ in calls]
    assert {total for _, total in calls} == {10}  # two images of 5 requested steps
    assert done == sorted(done) and done.count(10) == 1 and calls[-1] == (10, 10)


def test_cancel_stops_the_run(tiny_engine):
    steps_seen = []

    def cancelled() -> bool:
        return len(steps_seen) >= 2

    with pytest.raises(GenerationCancelledError):
        tiny_engine.generate(job(steps=6), on_step=lambda done, total: steps_seen.append(done), cancelled=cancelled)
    assert steps_seen == [1, 2]


def test_native_resolution_and_demo_flag(tiny_engine):
    # sample_size 16 latents x VAE factor 8; the default size rule builds on this.
    assert tiny_engine.native_resolution == 128
    assert tiny_engine.is_demo is True
    assert tiny_engine.device == torch.device("cpu") and tiny_engine.dtype == torch.float32
