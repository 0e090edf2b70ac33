"""The exported ComfyUI workflow: only nodes and inputs that exist in ComfyUI v0.12.1, and every request field back.

The table below was written from reading ComfyUI v0.12.1 (nodes.py, comfy_extras/nodes_sd3.py,
comfy/samplers.py): each node's required and optional inputs with their types or ranges, and its outputs.
"""

from __future__ import annotations

import random

import pytest

from sd3pose.comfy_workflow import ModelFiles, comfy_workflow, pose_image_name
from sd3pose.request import GenerationRequest, parse_request
from sd3pose.sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES, resolve_sampler_name

MAX_RESOLUTION = 16384
# Input: a link type (str), a (min, max) range, a list of choices, or None for a file name / free text.
COMFY_NODES: dict[str, dict] = {
    "CheckpointLoaderSimple": {"inputs": {"ckpt_name": None}, "outputs": ["MODEL", "CLIP", "VAE"]},
    "TripleCLIPLoader": {"inputs": {"clip_name1": None, "clip_name2": None, "clip_name3": None}, "outputs": ["CLIP"]},
    "DualCLIPLoader": {
        "inputs": {
            "clip_name1": None,
            "clip_name2": None,
            "type": ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15"]
            + ["kandinsky5", "kandinsky5_image", "ltxv", "newbie", "ace"],
        },
        "optional": {"device": ["default", "cpu"]},
        "outputs": ["CLIP"],
    },
    "CLIPTextEncode": {"inputs": {"text": None, "clip": "CLIP"}, "outputs": ["CONDITIONING"]},
    "ControlNetLoader": {"inputs": {"control_net_name": None}, "outputs": ["CONTROL_NET"]},
    "LoadImage": {"inputs": {"image": None}, "outputs": ["IMAGE", "MASK"]},
    "ControlNetApplyAdvanced": {
        "inputs": {
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "control_net": "CONTROL_NET",
            "image": "IMAGE",
            "strength": (0.0, 10.0),
            "start_percent": (0.0, 1.0),
            "end_percent": (0.0, 1.0),
        },
        "optional": {"vae": "VAE"},
        "outputs": ["CONDITIONING", "CONDITIONING"],
    },
    "EmptySD3LatentImage": {
        "inputs": {"width": (16, MAX_RESOLUTION), "height": (16, MAX_RESOLUTION), "batch_size": (1, 4096)},
        "outputs": ["LATENT"],
    },
    "KSampler": {
        "inputs": {
            "model": "MODEL",
            "seed": (0, 0xFFFFFFFFFFFFFFFF),
            "steps": (1, 10000),
            "cfg": (0.0, 100.0),
            "sampler_name": "SAMPLERS",
            "scheduler": "SCHEDULERS",
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "latent_image": "LATENT",
            "denoise": (0.0, 1.0),
        },
        "outputs": ["LATENT"],
    },
    "VAEDecode": {"inputs": {"samples": "LATENT", "vae": "VAE"}, "outputs": ["IMAGE"]},
    "SaveImage": {"inputs": {"images": "IMAGE", "filename_prefix": None}, "outputs": []},
}
# comfy.samplers.KSampler.SAMPLERS and .SCHEDULERS in v0.12.1.
COMFY_SAMPLERS = [
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "exp_heun_2_x0",
    "exp_heun_2_x0_sde",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
]
COMFY_SCHEDULERS = [
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
]

# Every request field is either carried by the graph (read back below) or decided the pose map's pixels
# (the LoadImage file) or how sd3pose delivers its answer.
NOT_IN_GRAPH = {
    "image": "the pose map made from it is the LoadImage file",
    "pose_keypoints": "the pose map made from them is the LoadImage file",
    "pose_mode": "decides how the pose map is made",
    "pose_parts": "decides what the pose map shows",
    "resize_mode": "decides how the pose map is fitted",
    "output_format": "SaveImage always writes PNG",
    "base64_output": "how sd3pose answers; ComfyUI saves files",
    "return_pose": "the pose map is the LoadImage file already",
}


def check_against_comfyui(graph: dict) -> None:
    """Every node class, input name, link type, choice and range exists in ComfyUI v0.12.1."""
    for node_id, node in graph.items():
        assert set(node) <= {"class_type", "inputs", "_meta"}, node_id
        spec = COMFY_NODES[node["class_type"]]
        allowed = {**spec["inputs"], **spec.get("optional", {})}
        assert set(spec["inputs"]) <= set(node["inputs"]) <= set(allowed), (node_id, node)
        for name, value in node["inputs"].items():
            expected = allowed[name]
            if isinstance(expected, str) and expected.isupper() and expected not in ("SAMPLERS", "SCHEDULERS"):
                source_id, output = value
                assert COMFY_NODES[graph[source_id]["class_type"]]["outputs"][output] == expected, (node_id, name)
            elif expected == "SAMPLERS":
                assert value in COMFY_SAMPLERS
            elif expected == "SCHEDULERS":
                assert value in COMFY_SCHEDULERS
            elif isinstance(expected, list):
                assert value in expected
            elif isinstance(expected, tuple):
                assert expected[0] <= value <= expected[1], (node_id, name, value)
            else:
                assert isinstance(value, str), (node_id, name)


def read_back(graph: dict) -> dict:
    """The request fields a ComfyUI user would read off the graph."""

    def only(class_type: str) -> dict:
        (node,) = [n for n in graph.values() if n["class_type"] == class_type]
        return node["inputs"]

    def text(link: list) -> str:
        return graph[link[0]]["inputs"]["text"]

    control, latent = only("ControlNetApplyAdvanced"), only("EmptySD3LatentImage")
    (control_id,) = [i for i, n in graph.items() if n["class_type"] == "ControlNetApplyAdvanced"]
    samplers = [n["inputs"] for n in graph.values() if n["class_type"] == "KSampler"]
    first = samplers[0]
    assert all({**s, "seed": 0} == {**first, "seed": 0} for s in samplers)  # one KSampler per seed, all else equal
    assert [s["seed"] for s in samplers] == [(first["seed"] + i) % 2**32 for i in range(len(samplers))]
    assert first["positive"] == [control_id, 0] and first["negative"] == [control_id, 1]
    # Each KSampler is decoded and saved on its own.
    saved = [
        graph[graph[n["inputs"]["images"][0]]["inputs"]["samples"][0]]
        for n in graph.values()
        if n["class_type"] == "SaveImage"
    ]
    assert [n["inputs"] for n in saved] == samplers
    return {
        "prompt": text(control["positive"]),
        "negative_prompt": text(control["negative"]),
        "num_inference_steps": first["steps"],
        "guidance_scale": first["cfg"],
        "seed": first["seed"],
        "samples": len(samplers),
        "strength": control["strength"],
        "sampler": resolve_sampler_name(first["sampler_name"]),
        "scheduler": first["scheduler"],
        "width": latent["width"],
        "height": latent["height"],
        "control_start": control["start_percent"],
        "control_end": control["end_percent"],
    }


def random_requests(count: int) -> list[GenerationRequest]:
    rng = random.Random(20240612)
    requests = []
    for i in range(count):
        start = round(rng.uniform(0, 0.5), 3)
        body = {
            "image": "aGVsbG8=",
            "prompt": rng.choice(["a dancer", "a (red:1.3) dress, \\(literal\\)", 'émoji 🎭 "quoted"\nnew line']),
            "negative_prompt": rng.choice(["", "low quality,less details", "(blurry:1.2)"]),
            "num_inference_steps": rng.randint(1, 100),
            "guidance_scale": round(rng.uniform(1, 20), 2),
            "seed": rng.choice([0, 698845, 2**32 - 1, rng.randrange(2**32)]),
            "samples": rng.randint(1, 4),
            "strength": round(rng.uniform(0, 1), 2),
            "sampler": SAMPLER_NAMES[i % len(SAMPLER_NAMES)],
            "scheduler": SCHEDULER_NAMES[i % len(SCHEDULER_NAMES)],
            "width": 16 * rng.randint(4, 128),
            "height": 16 * rng.randint(4, 128),
            "control_start": start,
            "control_end": round(rng.uniform(start + 0.01, 1), 3),
        }
        requests.append(parse_request(body))
    return requests


def test_every_request_field_is_accounted_for():
    carried = set(read_back(comfy_workflow(random_requests(1)[0], width=64, height=64, pose_image="p.png")))
    assert carried.isdisjoint(NOT_IN_GRAPH)
    assert carried | set(NOT_IN_GRAPH) == set(GenerationRequest.model_fields)


@pytest.mark.parametrize("request_", random_requests(54), ids=lambda r: f"{r.sampler}-{r.scheduler}-{r.samples}")
def test_the_workflow_uses_only_comfyui_nodes_and_round_trips_the_request(request_):
    graph = comfy_workflow(request_, width=request_.width, height=request_.height, pose_image="pose.png")
    check_against_comfyui(graph)
    assert read_back(graph) == {name: getattr(request_, name) for name in read_back(graph)}
    assert only_node(graph, "LoadImage")["image"] == "pose.png"


def only_node(graph: dict, class_type: str) -> dict:
    (node,) = [n for n in graph.values() if n["class_type"] == class_type]
    return node["inputs"]


def test_samplers_are_spelt_the_comfyui_way():
    def exported(name: str) -> str:
        request = parse_request({"image": "x", "prompt": "p", "sampler": name})
        return only_node(comfy_workflow(request, width=64, height=64, pose_image="p.png"), "KSampler")["sampler_name"]

    assert exported("euler_pp") == "euler_cfg_pp"
    assert exported("euler_ancestral_pp") == "euler_ancestral_cfg_pp"
    assert exported("dpmpp_2m") == "dpmpp_2m"
    assert {exported(name) for name in SAMPLER_NAMES} <= set(COMFY_SAMPLERS)


def test_model_files_are_parameters_and_no_t5_loads_the_two_clips():
    request = parse_request({"image": "x", "prompt": "p"})
    files = ModelFiles(checkpoint="a.safetensors", clip_l="l.st", clip_g="g.st", t5="t.st", controlnet="c.st")
    graph = comfy_workflow(request, width=64, height=64, pose_image="p.png", files=files)
    check_against_comfyui(graph)
    assert only_node(graph, "CheckpointLoaderSimple") == {"ckpt_name": "a.safetensors"}
    assert only_node(graph, "TripleCLIPLoader") == {"clip_name1": "l.st", "clip_name2": "g.st", "clip_name3": "t.st"}
    assert only_node(graph, "ControlNetLoader") == {"control_net_name": "c.st"}

    no_t5 = comfy_workflow(request, width=64, height=64, pose_image="p.png", files=ModelFiles(t5=None))
    check_against_comfyui(no_t5)
    assert only_node(no_t5, "DualCLIPLoader") == {
        "clip_name1": ModelFiles.clip_l,
        "clip_name2": ModelFiles.clip_g,
        "type": "sd3",
    }
    assert not [n for n in no_t5.values() if n["class_type"] == "TripleCLIPLoader"]


def test_a_random_seed_must_be_resolved_first():
    request = parse_request({"image": "x", "prompt": "p", "seed": -1})
    with pytest.raises(ValueError, match="resolve the random seed"):
        comfy_workflow(request, width=64, height=64, pose_image="p.png")
    graph = comfy_workflow(request.with_seed_resolved(), width=64, height=64, pose_image="p.png")
    assert only_node(graph, "KSampler")["seed"] >= 0


def test_the_pose_image_is_named_by_its_content():
    assert pose_image_name(b"one") == pose_image_name(b"one") != pose_image_name(b"two")
    assert pose_image_name(b"one").endswith(".png")
