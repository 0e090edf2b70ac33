"""The commands share one declaration of their options: the settings classes' fields."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import Field
from typer.testing import CliRunner

from sd3pose.cli import app
from sd3pose.cli.options import settings_options
from sd3pose.settings import EngineSettings

runner = CliRunner()
MODEL_OPTIONS = ("--model", "--controlnet", "--dtype", "--t5", "--no-t5", "--compile", "--offload", "SD3POSE_MODEL")


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_that_loads_models_takes_the_same_model_options() -> None:
    for command in ("generate", "serve", "worker"):
        text = _help(command)
        assert all(option in text for option in MODEL_OPTIONS), command
        assert "--data-dir" in text and "SD3POSE_DATA_DIR" in text, command


def test_demo_takes_only_where_to_listen_and_keep_data() -> None:
    text = _help("demo")
    assert "--port" in text and "--data-dir" in text and "--model" not in text and "--price" not in text


def _probe(settings_class=EngineSettings):
    seen = {}
    probe = typer.Typer()

    @probe.command()
    @settings_options(settings_class, into="engine")
    def run(engine: EngineSettings, name: str = typer.Option("x", "--name")) -> None:
        seen.update(engine=engine, name=name)

    return probe, seen


def test_an_option_comes_from_the_command_line_then_the_environment_then_the_default(tmp_path: Path) -> None:
    probe, seen = _probe()
    assert runner.invoke(probe, ["--name", "y"], env={"SD3POSE_DATA_DIR": str(tmp_path)}).exit_code == 0
    assert seen["engine"].data_dir == tmp_path and seen["name"] == "y" and seen["engine"].use_t5 is True
    given = ["--data-dir", "elsewhere", "--no-t5"]
    assert runner.invoke(probe, given, env={"SD3POSE_DATA_DIR": str(tmp_path)}).exit_code == 0
    assert seen["engine"].data_dir == Path("elsewhere") and seen["engine"].use_t5 is False
    assert runner.invoke(probe, []).exit_code == 0 and seen["engine"].data_dir == Path("var")


def test_a_new_settings_field_becomes_an_option_of_the_commands_that_share_it() -> None:
    class WithSlicing(EngineSettings):
        attention_slicing: bool = Field(False, description="Compute attention in slices (less memory).")

    probe, seen = _probe(WithSlicing)
    assert "--attention-slicing" in runner.invoke(probe, ["--help"], env={"COLUMNS": "400"}).output
    assert runner.invoke(probe, ["--attention-slicing"]).exit_code == 0 and seen["engine"].attention_slicing is True


def test_a_value_out_of_range_is_one_clear_line() -> None:
    result = runner.invoke(app, ["worker", "--broker", "redis://127.0.0.1:1/0", "--visibility-timeout", "0"])
    assert result.exit_code == 2 and "--visibility-timeout" in result.output and "Traceback" not in result.output


def test_serve_reads_its_devices_from_the_environment_too(monkeypatch) -> None:
    import sd3pose.cli.serve as serve

    served = []
    monkeypatch.setattr(serve, "run_server", lambda service, engine: served.append(service.devices))
    assert runner.invoke(app, ["serve"], env={"SD3POSE_DEVICE": "cuda:0 cuda:1"}).exit_code == 0
    assert runner.invoke(app, ["serve", "--device", "cpu"], env={"SD3POSE_DEVICE": "cuda:0"}).exit_code == 0
    assert runner.invoke(app, ["serve"], env={"SD3POSE_DEVICE": ""}).exit_code == 0
    assert served == [["cuda:0", "cuda:1"], ["cpu"], [None]]
    assert "SD3POSE_DEVICE" in _help("serve")
