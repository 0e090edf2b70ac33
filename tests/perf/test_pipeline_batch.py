"""Generator.run_batch and the service worker's dynamic batching: same images as one request at a time."""

from __future__ import annotations

import numpy as np
import pytest
from perf_helpers import decoded_pixels, png_base64
from tiny_jobs import pose_map

from sd3pose.errors import InvalidRequestError
from sd3pose.request import parse_request


def request(**fields):
    body = {
        "image": png_base64(pose_map(seed=fields.pop("pose_seed", 0))),
        "prompt": "a dancer in a red dress",
        "pose_mode": "none",
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "sampler": "euler",
        "scheduler": "normal",
        "output_format": "png",
    }
    body.update(fields)
    return parse_request(body)


REQUESTS = [
    request(seed=1),
    request(prompt="an astronaut", seed=2, samples=2, guidance_scale=3.0, pose_seed=5),
    request(prompt="a knight", seed=3, guidance_scale=1.0, strength=0.3),
    request(prompt="a chef", seed=4, control_start=0.25, control_end=0.75, pose_seed=6),
]


@pytest.fixture(scope="module")
def generator(tiny_engine):
    from sd3pose.pipeline import Generator

    return Generator(tiny_engine)


@pytest.fixture(scope="module")
def alone(generator):
    return [generator.run(r) for r in REQUESTS]


def test_run_batch_gives_each_request_its_own_result(generator, alone):
    steps: list[list[int]] = [[] for _ in REQUESTS]
    batch = generator.run_batch(REQUESTS, on_step=[lambda d, t, s=s: s.append(d) for s in steps])
    for single, batched in zip(alone, batch, strict=True):
        assert batched.seeds == single.seeds and len(batched.images) == len(single.images)
        assert np.abs(decoded_pixels(batched.images) - decoded_pixels(single.images)).max() <= 1
    assert steps == [[1, 2, 3]] * len(REQUESTS)  # every request sees its own progress


def test_a_bad_request_fails_alone(generator, alone):
    broken = request(image="bm90IGFuIGltYWdl")  # base64 of "not an image"
    too_wide = request(width=1088)  # larger than the tiny model allows (1024)
    results = generator.run_batch([broken, REQUESTS[0], too_wide])
    assert isinstance(results[0], InvalidRequestError) and "image" in str(results[0]).lower()
    assert isinstance(results[2], InvalidRequestError) and "at most" in str(results[2])
    assert np.abs(decoded_pixels(results[1].images) - decoded_pixels(alone[0].images)).max() <= 1


def test_worker_merges_queued_jobs_into_one_batch(tmp_path, generator, alone):
    from sd3pose.jobs.contract import JobStatus
    from sd3pose.service.embedded_queue import EmbeddedJobQueue
    from sd3pose.service.store import Database
    from sd3pose.service.worker import MAX_JOBS_PER_TURN, run_jobs

    assert len(REQUESTS) <= MAX_JOBS_PER_TURN
    queue = EmbeddedJobQueue(Database(tmp_path / "db.sqlite"), lambda device: generator, results_dir=tmp_path)
    ids = [queue.submit(r, kind="async", key_id=None, reserved=0).id for r in REQUESTS]
    calls = []
    original = generator.engine.generate_batch_latents

    def spy(jobs, **kwargs):
        calls.append(len(jobs))
        return original(jobs, **kwargs)

    generator.engine.generate_batch_latents = spy
    try:
        run_jobs(queue, generator, queue.take(MAX_JOBS_PER_TURN, timeout_s=0))
    finally:
        del generator.engine.generate_batch_latents
    assert calls == [len(REQUESTS)]  # one model batch for all four
    for job_id, single in zip(ids, alone, strict=True):
        assert queue.get(job_id).status is JobStatus.COMPLETED
        result = queue.result(job_id)
        assert np.abs(decoded_pixels(result.images) - decoded_pixels(single.images)).max() <= 1


def test_several_devices_share_a_burst_of_jobs(tmp_path, generator):
    from sd3pose.service.embedded_queue import EmbeddedJobQueue
    from sd3pose.service.store import Database
    from sd3pose.service.worker import MAX_JOBS_PER_TURN, jobs_per_turn

    def queue(devices):
        return EmbeddedJobQueue(
            Database(tmp_path / f"{len(devices)}.sqlite"),
            lambda device: generator,
            results_dir=tmp_path,
            devices=devices,
        )

    assert jobs_per_turn(queue([None])) == MAX_JOBS_PER_TURN
    assert jobs_per_turn(queue(["cuda:0", "cuda:1"])) == MAX_JOBS_PER_TURN // 2
    assert jobs_per_turn(queue([f"cuda:{i}" for i in range(8)])) == 1
