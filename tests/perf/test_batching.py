"""Dynamic batching: jobs merged into one model batch get the images they would get alone.

Tolerance: latents within 2e-5 absolute (float32 on CPU: only matmul blocking differs with the
batch size, <= 5e-6 observed), decoded images within 1/255 per pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from perf_helpers import assert_close_latents, pixels
from tiny_jobs import job, pose_map

from sd3pose.engine.engine import batch_key
from sd3pose.errors import GenerationCancelledError, InvalidRequestError

# Four jobs that differ in everything a merged batch may mix: prompts, seeds, sample count,
# guidance (including 1 = no unconditional rows), strength (including 0), control window and pose map.
MIXED = [
    job(),
    job(
        prompt="an astronaut sitting",
        negative_prompt="blurry",
        seeds=[5, 9],
        guidance_scale=3.0,
        control_image=pose_map(seed=3),
    ),
    job(prompt="a knight", guidance_scale=1.0, strength=0.0, seeds=[11]),
    job(prompt="a chef", strength=0.5, control_start=0.3, control_end=0.7, seeds=[12], control_image=pose_map(seed=4)),
]


@pytest.mark.parametrize("sampler", ["euler", "euler_pp", "dpmpp_2m_sde"])
def test_merged_jobs_equal_running_alone(tiny_engine, sampler):
    jobs = [dataclasses.replace(j, sampler=sampler) for j in MIXED]
    merged = tiny_engine.generate_batch_latents(jobs)
    for the_job, latents in zip(jobs, merged, strict=True):
        assert_close_latents(latents, tiny_engine.generate_latents(the_job))
    # The jobs really differ, so the check above could fail if rows were mixed up.
    assert not np.allclose(merged[0].numpy(), merged[2].numpy(), atol=1e-2)


def test_generate_batch_images_equal_alone_and_a_bad_job_fails_alone(tiny_engine):
    bad = job(width=70)  # not a multiple of 16
    results = tiny_engine.generate_batch([MIXED[0], bad, MIXED[1]])
    assert isinstance(results[1], InvalidRequestError) and "multiple of 16" in str(results[1])
    for the_job, images in ((MIXED[0], results[0]), (MIXED[1], results[2])):
        assert len(images) == len(the_job.seeds)
        assert np.abs(pixels(images) - pixels(tiny_engine.generate(the_job))).max() <= 1


def test_incompatible_jobs_run_separately_in_one_call(tiny_engine):
    other_size = job(width=96, height=64, control_image=pose_map(96, 64))
    adaptive = job(sampler="dpm_adaptive", steps=2)
    assert batch_key(adaptive) is None  # its step sizes come from a whole-batch error norm
    assert batch_key(MIXED[0]) != batch_key(other_size)
    results = tiny_engine.generate_batch([MIXED[0], other_size, adaptive])
    assert [im.size for im in results[1]] == [(96, 64)]
    assert np.abs(pixels(results[2]) - pixels(tiny_engine.generate(adaptive))).max() <= 1


def test_batches_are_capped_at_max_batch_images(tiny_engine):
    calls = []
    original = tiny_engine.generate_batch_latents

    def spy(jobs, **kwargs):
        calls.append(sum(len(j.seeds) for j in jobs))
        return original(jobs, **kwargs)

    tiny_engine.generate_batch_latents = spy
    try:
        tiny_engine.generate_batch([job(seeds=[1, 2]), job(seeds=[3, 4]), job(seeds=[5])], max_batch_images=4)
    finally:
        del tiny_engine.generate_batch_latents
    assert calls == [4, 1]


def test_a_cancelled_job_fails_and_its_neighbours_are_unaffected(tiny_engine):
    steps = []
    results = tiny_engine.generate_batch(
        [MIXED[0], MIXED[3]],
        on_step=[lambda done, total: steps.append(done), None],
        cancelled=[lambda: len(steps) >= 1, lambda: False],
    )
    assert isinstance(results[0], GenerationCancelledError)
    assert np.abs(pixels(results[1]) - pixels(tiny_engine.generate(MIXED[3]))).max() <= 1


def test_the_batch_stops_when_every_job_is_cancelled(tiny_engine):
    steps = []
    results = tiny_engine.generate_batch(
        [MIXED[0], MIXED[1]],
        on_step=[lambda done, total: steps.append(done), None],
        cancelled=[lambda: len(steps) >= 1, lambda: len(steps) >= 1],
    )
    assert all(isinstance(r, GenerationCancelledError) for r in results)
    assert steps == [1]  # stopped right after the first step, not at the end
