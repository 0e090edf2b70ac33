"""`sd3pose generate` end to end on the tiny model, and every sampler x scheduler through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sd3pose.cli import app
from sd3pose.engine import EngineJob
from sd3pose.pose import Person, Pose, render_pose
from sd3pose.pose.openpose_json import pose_to_openpose_json
from sd3pose.sampling import SAMPLER_NAMES, SCHEDULER_NAMES

runner = CliRunner()


def _standing_person(width: int, height: int) -> Pose:
    """A simple upright skeleton in OpenPose body order (nose, neck, right arm, left arm, ...)."""
    cx = width / 2
    points = [
        (cx, 0.15),
        (cx, 0.3),
        (cx - 0.15 * width, 0.3),
        (cx - 0.2 * width, 0.45),
        (cx - 0.22 * width, 0.6),
        (cx + 0.15 * width, 0.3),
        (cx + 0.2 * width, 0.45),
        (cx + 0.22 * width, 0.6),
        (cx - 0.08 * width, 0.6),
        (cx - 0.08 * width, 0.78),
        (cx - 0.08 * width, 0.95),
        (cx + 0.08 * width, 0.6),
        (cx + 0.08 * width, 0.78),
        (cx + 0.08 * width, 0.95),
        (cx - 0.03 * width, 0.13),
        (cx + 0.03 * width, 0.13),
        (cx - 0.06 * width, 0.14),
        (cx + 0.06 * width, 0.14),
    ]
    body = np.array([(x, y * height, 1.0) for x, y in points], dtype=np.float32)
    return Pose(people=[Person(body=body, left_hand=None, right_hand=None, face=None)], width=width, height=height)


@pytest.fixture(scope="module")
def pose_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pose") / "pose.png"
    render_pose(_standing_person(64, 64), 64, 64).save(path)
    return path


def _model_args(tiny_model_dir: Path) -> list[str]:
    return ["--model", str(tiny_model_dir / "base"), "--controlnet", str(tiny_model_dir / "controlnet")]


def test_generate_writes_one_file_per_sample_with_consecutive_seeds(
    tiny_model_dir: Path, pose_map: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    result = runner.invoke(
        app,
        [
            "generate",
            "--image",
            str(pose_map),
            "--prompt",
            "a dancer",
            "--samples",
            "3",
            "--steps",
            "3",
            "--seed",
            "41",
            "--width",
            "64",
            "--height",
            "64",
            "--output",
            str(out),
            "--save-pose",
            str(tmp_path / "p.png"),
            *_model_args(tiny_model_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    for i in range(3):
        image = Image.open(tmp_path / f"out-{i}.png")
        assert image.size == (64, 64)
        assert f"seed {41 + i}" in result.output
    assert not out.exists()
    # The pose map was used as is (auto mode recognises a rendered map): it comes back unchanged.
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png").convert("RGB")), np.asarray(Image.open(pose_map)))


def test_generate_accepts_openpose_json_instead_of_an_image(tiny_model_dir: Path, tmp_path: Path) -> None:
    keypoints = tmp_path / "pose.json"
    keypoints.write_text(json.dumps(pose_to_openpose_json(_standing_person(96, 64))))
    out = tmp_path / "out.jpg"
    result = runner.invoke(
        app,
        [
            "generate",
            "--keypoints",
            str(keypoints),
            "--prompt",
            "a dancer",
            "--steps",
            "2",
            "--output",
            str(out),
            "--height",
            "64",
            *_model_args(tiny_model_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    # Only the height was given: the width follows the keypoints' canvas aspect ratio (3:2).
    assert Image.open(out).size == (96, 64)
    assert Image.open(out).format == "JPEG"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--width", "100"], "multiple of 16"),
        (["--sampler", "euler_a"], "unknown sampler 'euler_a'; use one of: euler, euler_pp"),
        (["--scheduler", "cosine"], "unknown scheduler 'cosine'"),
        (["--steps", "0"], "num_inference_steps"),
        (["--model", "/nonexistent/sd3", "--controlnet", "/nonexistent/cn"], "/nonexistent/sd3"),
    ],
)
def test_generate_reports_bad_input_in_one_sentence(
    args: list[str], expected: str, tiny_model_dir: Path, pose_map: Path, tmp_path: Path
) -> None:
    model = [] if "--model" in args else _model_args(tiny_model_dir)
    result = runner.invoke(
        app,
        [
            "generate",
            "--image",
            str(pose_map),
            "--prompt",
            "x",
            "--output",
            str(tmp_path / "o.png"),
            *model,
            *args,
        ],
    )
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs_from_the_cli(sampler: str, tiny_model_dir: Path, pose_map: Path, tmp_path: Path) -> None:
    # Each sampler with a scheduler from the rotation, so the CLI sees every scheduler too.
    scheduler = SCHEDULER_NAMES[SAMPLER_NAMES.index(sampler) % len(SCHEDULER_NAMES)]
    out = tmp_path / "out.png"
    result = runner.invoke(
        app,
        [
            "generate",
            "--image",
            str(pose_map),
            "--prompt",
            "a dancer",
            "--steps",
            "2",
            "--sampler",
            sampler,
            "--scheduler",
            scheduler,
            "--output",
            str(out),
            *_model_args(tiny_model_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    # No size given: the model's native size (128 px for the tiny model) at the pose map's aspect ratio.
    assert np.asarray(Image.open(out)).shape == (128, 128, 3)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_sampler_and_scheduler_pair_gives_a_finite_image(tiny_engine, pose_map: Path, scheduler: str) -> None:
    control = Image.open(pose_map).convert("RGB")
    for sampler in SAMPLER_NAMES:
        job = EngineJob(
            prompt="a dancer",
            negative_prompt="blurry",
            steps=2,
            guidance_scale=3.0,
            seeds=[7],
            strength=0.8,
            sampler=sampler,
            scheduler=scheduler,
            width=64,
            height=64,
            control_image=control,
        )
        latents = tiny_engine.generate_latents(job)
        assert latents.shape == (1, tiny_engine.latent_channels, 8, 8), (sampler, scheduler)
        assert bool(latents.isfinite().all()), (sampler, scheduler)


def test_unwritable_demo_model_folder_is_named_with_the_fix(pose_map: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(
        app,
        [
            "generate",
            "--image",
            str(pose_map),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--output",
            str(tmp_path / "o.png"),
            "--data-dir",
            str(blocker / "var"),
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: cannot build the demo model in")
    assert "--data-dir" in result.output and "Traceback" not in result.output


def test_output_folders_are_created_and_an_impossible_one_fails_before_generating(
    tiny_model_dir: Path, pose_map: Path, tmp_path: Path
) -> None:
    args = ["generate", "--image", str(pose_map), "--prompt", "x", "--steps", "1", *_model_args(tiny_model_dir)]
    outputs = ["-o", str(tmp_path / "new" / "o.png"), "--save-pose", str(tmp_path / "p" / "p.png")]
    result = runner.invoke(app, [*args, *outputs])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "o.png").is_file() and (tmp_path / "p" / "p.png").is_file()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, [*args, "-o", str(blocker / "o.png")])
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: cannot create the folder of {blocker / 'o.png'}")
    assert "sampling" not in result.output  # it failed before loading models and sampling
