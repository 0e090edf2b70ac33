"""`POST /v1/comfy-workflow`: the request as a ComfyUI workflow plus the pose map it loads (scripted generator)."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient
from service_helpers import REQUEST, ScriptedGenerator, new_key

from sd3pose.comfy_workflow import pose_image_name


def nodes(workflow: dict, class_type: str) -> list[dict]:
    return [node["inputs"] for node in workflow.values() if node["class_type"] == class_type]


def test_answers_the_workflow_and_the_pose_map_it_loads(client: TestClient, generator: ScriptedGenerator) -> None:
    key = new_key(client, credits=5)
    body = {**REQUEST, "prompt": "a (dancer:1.2)", "samples": 3, "seed": 40, "sampler": "euler_ancestral_pp"}
    response = client.post("/v1/comfy-workflow", json=body, headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"workflow", "pose_image", "pose_image_name", "width", "height", "seeds"}
    expected_png = generator.preview_pose(None).pose_png  # what the pose stage made of the image
    assert base64.b64decode(answer["pose_image"]) == expected_png
    assert answer["pose_image_name"] == pose_image_name(expected_png)
    workflow = answer["workflow"]
    assert nodes(workflow, "LoadImage") == [{"image": answer["pose_image_name"]}]
    assert nodes(workflow, "EmptySD3LatentImage")[0] | {"batch_size": 1} == {"width": 64, "height": 64, "batch_size": 1}
    assert [k["seed"] for k in nodes(workflow, "KSampler")] == answer["seeds"] == [40, 41, 42]
    assert {k["sampler_name"] for k in nodes(workflow, "KSampler")} == {"euler_ancestral_cfg_pp"}
    assert nodes(workflow, "TripleCLIPLoader")
    # Nothing was generated, and nothing was charged.
    assert generator.runs == [] and response.headers["x-remaining-credits"] == "5"


def test_query_parameters_choose_the_files_and_the_no_t5_loader(client: TestClient) -> None:
    query = "?t5=false&checkpoint=sd3.safetensors&controlnet=pose.safetensors&clip_l=l.st&clip_g=g.st"
    response = client.post(f"/v1/comfy-workflow{query}", json=REQUEST)
    assert response.status_code == 200, response.text
    workflow = response.json()["workflow"]
    assert nodes(workflow, "DualCLIPLoader") == [{"clip_name1": "l.st", "clip_name2": "g.st", "type": "sd3"}]
    assert nodes(workflow, "CheckpointLoaderSimple") == [{"ckpt_name": "sd3.safetensors"}]
    assert nodes(workflow, "ControlNetLoader") == [{"control_net_name": "pose.safetensors"}]


def test_a_random_seed_is_resolved(client: TestClient) -> None:
    answer = client.post("/v1/comfy-workflow", json={**REQUEST, "seed": -1}).json()
    assert answer["seeds"][0] >= 0
    assert nodes(answer["workflow"], "KSampler")[0]["seed"] == answer["seeds"][0]


def test_bad_requests_and_keys_without_the_pose_scope_are_refused(client: TestClient) -> None:
    response = client.post("/v1/comfy-workflow", json={**REQUEST, "prompt": "(a:nan)"})
    assert response.status_code == 400 and "field 'prompt'" in response.json()["error"]
    key = new_key(client, scopes=["generate"])
    response = client.post("/v1/comfy-workflow", json=REQUEST, headers={"x-api-key": key})
    assert response.status_code == 403
