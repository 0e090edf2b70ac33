"""`sd3pose generate` on the real-shaped model (published widths and file formats, random weights), without T5.

The loader's no-T5 path at real shapes; with T5 the serve test and the engine tests cover it. Small and
short (128x128, 2 steps): real widths are slow on a CPU.
"""

from __future__ import annotations

from PIL import Image
from tiny_jobs import pose_map
from typer.testing import CliRunner

from sd3pose.cli import app


def test_generate_answers_with_the_real_shaped_model_without_t5(real_shaped_model_dir, tmp_path):
    pose_map(128, 128).save(tmp_path / "pose.png")
    arguments = ["generate", "--image", str(tmp_path / "pose.png"), "--prompt", "a dancer", "--output"]
    arguments += [str(tmp_path / "out.png"), "--width", "128", "--height", "128", "--steps", "2", "--device", "cpu"]
    model = real_shaped_model_dir
    arguments += ["--model", str(model / "base"), "--controlnet", str(model / "controlnet")]
    result = CliRunner().invoke(app, [*arguments, "--no-t5"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "random-weight" in result.output
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (128, 128)
        assert len(set(image.getdata())) > 100  # an image, not a blank
