"""`sd3pose comfy-workflow REQUEST.json > workflow.json`: the workflow on stdout, the pose map beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tiny_jobs import pose_map
from typer.testing import CliRunner

from sd3pose.cli import app

runner = CliRunner()


def nodes(workflow: dict, class_type: str) -> list[dict]:
    return [node["inputs"] for node in workflow.values() if node["class_type"] == class_type]


@pytest.fixture
def request_file(tmp_path: Path) -> Path:
    pose_map(120, 90).save(tmp_path / "pose.png")  # a ready pose map: auto mode uses it as it is
    path = tmp_path / "request.json"
    body = {"image": str(tmp_path / "pose.png"), "prompt": "a (dancer:1.2)", "samples": 2, "seed": 7}
    path.write_text(json.dumps({**body, "sampler": "euler_pp", "control_start": 0.25, "output_format": "webp"}))
    return path


def test_writes_the_workflow_to_stdout_and_the_pose_map_it_loads(request_file: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["comfy-workflow", str(request_file), "--native-size", "128"])
    assert result.exit_code == 0, result.output
    workflow = json.loads(result.stdout)  # stdout is the workflow alone: `> workflow.json` works
    (load,) = nodes(workflow, "LoadImage")
    pose = Image.open(tmp_path / load["image"])
    (latent,) = nodes(workflow, "EmptySD3LatentImage")
    # The input's 4:3 at about 128 x 128 pixels, rounded to 64, as the service would generate it.
    assert pose.size == (latent["width"], latent["height"]) == (128, 128)
    assert [k["seed"] for k in nodes(workflow, "KSampler")] == [7, 8]
    assert {k["sampler_name"] for k in nodes(workflow, "KSampler")} == {"euler_cfg_pp"}
    assert nodes(workflow, "ControlNetApplyAdvanced")[0]["start_percent"] == 0.25
    assert nodes(workflow, "CLIPTextEncode")[0]["text"] == "a (dancer:1.2)"
    assert nodes(workflow, "TripleCLIPLoader")
    assert "put it in ComfyUI's input/ folder" in result.stderr
    assert "SaveImage writes PNG files, not webp" in result.stderr


def test_options_choose_files_names_and_the_no_t5_loader(request_file: Path, tmp_path: Path):
    out, pose = tmp_path / "workflow.json", tmp_path / "my_pose.png"
    args = ["comfy-workflow", str(request_file), "-o", str(out), "--pose-out", str(pose), "--no-t5"]
    result = runner.invoke(app, [*args, "--checkpoint", "sd3.safetensors", "--controlnet", "pose.safetensors"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    workflow = json.loads(out.read_text())
    assert nodes(workflow, "LoadImage") == [{"image": "my_pose.png"}] and pose.is_file()
    assert nodes(workflow, "DualCLIPLoader")[0]["type"] == "sd3" and not nodes(workflow, "TripleCLIPLoader")
    assert nodes(workflow, "CheckpointLoaderSimple") == [{"ckpt_name": "sd3.safetensors"}]
    assert nodes(workflow, "ControlNetLoader") == [{"control_net_name": "pose.safetensors"}]


def test_a_random_seed_is_resolved_and_reported(request_file: Path, tmp_path: Path):
    body = json.loads(request_file.read_text())
    request_file.write_text(json.dumps({**body, "seed": -1, "samples": 1}))
    result = runner.invoke(app, ["comfy-workflow", str(request_file), "--pose-out", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    (sampler,) = nodes(json.loads(result.stdout), "KSampler")
    assert sampler["seed"] >= 0 and f"seeds {sampler['seed']}:" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "could not read the request"),
        ('{"prompt": "a dancer"}', "field 'image' is required"),
        ('{"image": "x.png", "prompt": "(a:inf)"}', "is not a finite number"),
    ],
)
def test_bad_requests_get_one_clear_line(tmp_path: Path, content: str, message: str):
    path = tmp_path / "request.json"
    path.write_text(content)
    result = runner.invoke(app, ["comfy-workflow", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
