"""The request contract: the hosted API's fields, defaults and ranges, and clear messages for bad input."""

from __future__ import annotations

import json

import pytest

from sd3pose.errors import InvalidRequestError
from sd3pose.request import GenerationRequest, OutputFormat, PoseMode, default_size, parse_request

MINIMAL = {"image": "aGVsbG8=", "prompt": "a dancer"}


def test_defaults_are_the_hosted_apis() -> None:
    request = parse_request(MINIMAL)
    assert request.negative_prompt == "low quality,less details"
    assert request.num_inference_steps == 20
    assert request.guidance_scale == 7
    assert request.seed == 698845
    assert request.samples == 1
    assert request.strength == 0.8
    assert request.sampler == "dpmpp_2m"
    assert request.scheduler == "sgm_uniform"
    assert request.base64_output is False
    assert request.pose_mode is PoseMode.auto
    assert request.output_format is OutputFormat.jpeg
    assert [p.value for p in request.pose_parts] == ["body", "hands", "face"]


def test_base64_field_keeps_its_wire_name_in_the_schema() -> None:
    assert parse_request({**MINIMAL, "base64": True}).base64_output is True
    properties = GenerationRequest.model_json_schema(by_alias=True)["properties"]
    assert "base64" in properties and "base64_output" not in properties
    assert len(properties["sampler"]["enum"]) == 27
    assert len(properties["scheduler"]["enum"]) == 6


@pytest.mark.parametrize(
    ("alias", "canonical"), [("euler_cfg_pp", "euler_pp"), ("EULER_ANCESTRAL_CFG_PP", "euler_ancestral_pp")]
)
def test_comfyui_spelling_of_cfg_pp_samplers_is_accepted(alias: str, canonical: str) -> None:
    assert parse_request({**MINIMAL, "sampler": alias}).sampler == canonical


def test_seeds_are_consecutive_and_random_seed_is_resolved() -> None:
    assert parse_request({**MINIMAL, "seed": 10, "samples": 3}).seeds == [10, 11, 12]
    random_request = parse_request({**MINIMAL, "seed": -1, "samples": 2}).with_seed_resolved()
    assert random_request.seed >= 0
    assert random_request.seeds == [random_request.seed, random_request.seed + 1]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "x"}, "field 'image' is required (or send 'pose_keypoints' instead)"),
        ({"image": "x"}, "field 'prompt' is required"),
        ({**MINIMAL, "prompt": "   "}, "field 'prompt': must contain text"),
        ({**MINIMAL, "num_inference_steps": 101}, "field 'num_inference_steps': Input should be less than or equal"),
        ({**MINIMAL, "guidance_scale": 0.5}, "field 'guidance_scale': Input should be greater than or equal to 1"),
        ({**MINIMAL, "strength": 1.5}, "field 'strength'"),
        ({**MINIMAL, "samples": 5}, "field 'samples': must be at most 4 on this server"),
        ({**MINIMAL, "seed": -2}, "field 'seed'"),
        ({**MINIMAL, "sampler": "k_euler"}, "field 'sampler': unknown sampler 'k_euler'; use one of: euler,"),
        ({**MINIMAL, "scheduler": "linear"}, "unknown scheduler 'linear'; use one of: normal, karras"),
        ({**MINIMAL, "width": 1000}, "field 'width': must be a multiple of 16 (try 992 or 1008)"),
        ({**MINIMAL, "pose_mode": "maybe"}, "field 'pose_mode'"),
        ({**MINIMAL, "pose_parts": []}, "field 'pose_parts'"),
        ({**MINIMAL, "control_start": 0.6, "control_end": 0.4}, "control_start must be smaller than control_end"),
        ([1, 2], "the request body must be a JSON object"),
    ],
)
def test_bad_input_names_the_field_and_the_fix(body: object, expected: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(body)
    assert expected in caught.value.message
    assert caught.value.status_code == 400


def _nested(levels: int) -> dict:
    keypoints: dict = {"people": []}
    inner = keypoints
    for _ in range(levels):
        inner["more"] = {}
        inner = inner["more"]
    return keypoints


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # JSON may spell lone surrogates ("\\ud800"); they are not text, and no job could be stored with them.
        (json.loads('{"image": "aGVsbG8=\\ud800", "prompt": "x"}'), "field 'image': contains a lone surrogate"),
        (json.loads('{"image": "aGVsbG8=", "prompt": "x", "negative_prompt": "\\udc00"}'), "field 'negative_prompt'"),
        (json.loads('{"pose_keypoints": {"people": [], "\\ud800": 1}, "prompt": "x"}'), "field 'pose_keypoints'"),
        ({"pose_keypoints": _nested(220), "prompt": "x"}, "field 'pose_keypoints': is nested deeper than 8 levels"),
    ],
)
def test_input_that_could_not_be_stored_as_a_job_is_refused(body: dict, expected: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        request = parse_request(body)
        request.model_dump_json()  # what queuing the job does; reached only if parsing wrongly accepted it
    assert expected in caught.value.message


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request({**MINIMAL, "num_inference_steps": 0, "guidance_scale": 50})
    assert "num_inference_steps" in caught.value.message and "guidance_scale" in caught.value.message


def test_server_may_raise_the_samples_cap() -> None:
    assert parse_request({**MINIMAL, "samples": 6}, max_samples=8).samples == 6


def test_unknown_fields_are_ignored_for_client_compatibility() -> None:
    assert parse_request({**MINIMAL, "webhook": "https://example.com"}).prompt == "a dancer"


@pytest.mark.parametrize(
    ("source", "native", "expected"),
    [
        ((512, 512), 1024, (1024, 1024)),
        ((768, 512), 1024, (1280, 832)),  # 3:2 landscape at about one megapixel
        ((512, 768), 1024, (832, 1280)),
        ((100, 10_000), 1024, (512, 2048)),  # extreme aspect clamped to 1:4
        ((640, 480), 128, (128, 128)),  # tiny model: sides are multiples of 64
    ],
)
def test_default_size_keeps_aspect_at_native_pixel_count(
    source: tuple[int, int], native: int, expected: tuple[int, int]
) -> None:
    width, height = default_size(*source, native=native)
    assert (width, height) == expected
    assert width % 64 == 0 and height % 64 == 0


def test_seeds_near_the_top_wrap_so_every_reported_seed_can_be_sent_back() -> None:
    top = 2**32 - 1
    request = parse_request({**MINIMAL, "seed": top - 1, "samples": 4})
    assert request.seeds == [top - 1, top, 0, 1]
    for seed in request.seeds:  # re-running one image alone with its reported seed is a valid request
        assert parse_request({**MINIMAL, "seed": seed}).seeds == [seed]
