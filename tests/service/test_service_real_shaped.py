"""`sd3pose serve --model ... --controlnet ...` on the real-shaped model (published widths and file formats,
random weights, T5 on), answering the README's example request.

The request is the README's own block, run as a user would, with two changes for a CPU: 2 steps instead
of 20 and a 128x128 image instead of the model's native ~1 MP (real widths take minutes there).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_service_demo import cli_server, readme_example, run_example

README_STEPS = '"num_inference_steps": 20,'


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("base64") is None, reason="needs curl and base64")
def test_serve_answers_the_readme_example_with_the_real_shaped_model(real_shaped_model_dir, tmp_path: Path) -> None:
    model = ["--model", str(real_shaped_model_dir / "base"), "--controlnet", str(real_shaped_model_dir / "controlnet")]
    with cli_server(["serve", *model, "--data-dir", str(tmp_path / "var")], tmp_path, ready_timeout_s=300) as port:
        script = readme_example(port)
        assert README_STEPS in script
        script = script.replace(README_STEPS, '"num_inference_steps": 2, "width": 128, "height": 128,')
        headers = run_example(script, tmp_path)
    assert " 200" in headers.splitlines()[0], headers
    assert "x-seed: 698845" in headers.lower()
    with Image.open(tmp_path / "out.jpg") as image:
        assert image.format == "JPEG" and image.size == (128, 128)
    log = (tmp_path / "server.log").read_text()
    assert "T5 on" in log and "random-weight" in log
