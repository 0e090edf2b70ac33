"""`sd3pose download`, offline: huggingface_hub's download call is replaced by one that filters the real
repositories' file lists (below, as facts) with huggingface_hub's own pattern rules.

Sizes are the hub's listings, to its three significant figures (stabilityai/stable-diffusion-3-medium-diffusers
and InstantX/SD3-Controlnet-Pose; the base repository's root checkpoints as tests/fixtures/sd3-medium-configs/
README.md records them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sd3pose.cli import app
from sd3pose.engine import download

GB, MB, KB = 10**9, 10**6, 10**3

BASE_FILES = {
    ".gitattributes": int(1.52 * KB),
    "LICENSE": int(7.42 * KB),
    "README.md": int(9.33 * KB),
    "mmdit.png": int(457 * KB),
    "sd3demo.jpg": int(7.4 * MB),
    "sd3_medium.safetensors": int(4.34 * GB),
    "sd3_medium_incl_clips.safetensors": int(5.97 * GB),
    "sd3_medium_incl_clips_t5xxlfp16.safetensors": int(15.8 * GB),
    "sd3_medium_incl_clips_t5xxlfp8.safetensors": int(10.9 * GB),
    "model_index.json": 706,
    "scheduler/scheduler_config.json": 141,
    "text_encoder/config.json": 574,
    "text_encoder/model.safetensors": int(247 * MB),
    "text_encoder_2/config.json": 570,
    "text_encoder_2/model.safetensors": int(1.39 * GB),
    "text_encoder_3/config.json": 740,
    "text_encoder_3/model-00001-of-00002.safetensors": int(4.99 * GB),
    "text_encoder_3/model-00002-of-00002.safetensors": int(4.53 * GB),
    "text_encoder_3/model.safetensors.index.json": int(19.9 * KB),
    "text_encoders/README.md": 636,
    "text_encoders/clip_g.safetensors": int(1.39 * GB),
    "text_encoders/clip_l.safetensors": int(246 * MB),
    "text_encoders/t5xxl_fp16.safetensors": int(9.79 * GB),
    "text_encoders/t5xxl_fp8_e4m3fn.safetensors": int(4.89 * GB),
    "tokenizer/merges.txt": int(525 * KB),
    "tokenizer/special_tokens_map.json": 588,
    "tokenizer/tokenizer_config.json": 705,
    "tokenizer/vocab.json": int(1.06 * MB),
    "tokenizer_2/merges.txt": int(525 * KB),
    "tokenizer_2/special_tokens_map.json": 576,
    "tokenizer_2/tokenizer_config.json": 856,
    "tokenizer_2/vocab.json": int(1.06 * MB),
    "tokenizer_3/special_tokens_map.json": int(2.54 * KB),
    "tokenizer_3/spiece.model": int(792 * KB),
    "tokenizer_3/tokenizer.json": int(2.42 * MB),
    "tokenizer_3/tokenizer_config.json": int(20.6 * KB),
    "transformer/config.json": 372,
    "transformer/diffusion_pytorch_model.safetensors": int(4.17 * GB),
    "vae/config.json": 739,
    "vae/diffusion_pytorch_model.safetensors": int(168 * MB),
}
CONTROLNET_FILES = {
    ".gitattributes": int(1.52 * KB),
    "README.md": int(1.86 * KB),
    "config.json": 397,
    "demo_0.jpg": int(141 * KB),
    "demo_3.jpg": int(142 * KB),
    "demo_5.jpg": int(147 * KB),
    "demo_7.jpg": int(121 * KB),
    "demo_9.jpg": int(116 * KB),
    "diffusion_pytorch_model.safetensors": int(1.19 * GB),
    "pose.jpg": int(22 * KB),
}
REPOS = {download.BASE_REPO: BASE_FILES, download.CONTROLNET_REPO: CONTROLNET_FILES}
# The folders StableDiffusion3Pipeline.from_pretrained reads (model_index.json lists them).
DIFFUSERS_FOLDERS = {"scheduler", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2"}
DIFFUSERS_FOLDERS |= {"tokenizer_3", "transformer", "vae"}


class FakeHub:
    """Stands in for huggingface_hub.snapshot_download: the real file lists, filtered by the real pattern rules.

    A real (not dry) run writes a one-byte placeholder for each selected file not yet in local_dir and
    records the file with its true size.
    """

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []  # (repo, dry_run) in call order
        self.downloaded: dict[str, dict[str, int]] = {}
        self.error = error

    def __call__(self, repo_id, *, local_dir, allow_patterns=None, ignore_patterns=None, dry_run=False, **_):
        from huggingface_hub import DryRunFileInfo
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append((repo_id, dry_run))
        if self.error is not None:
            raise self.error
        files = REPOS[repo_id]
        selected = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        local = Path(local_dir)
        if dry_run:
            return [
                DryRunFileInfo(
                    commit_hash="0" * 40,
                    file_size=files[name],
                    filename=name,
                    local_path=str(local / name),
                    is_cached=(local / name).exists(),
                    will_download=not (local / name).exists(),
                )
                for name in selected
            ]
        for name in selected:
            if not (local / name).exists():
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                (local / name).write_bytes(b"x")
                self.downloaded.setdefault(repo_id, {})[name] = files[name]
        return str(local)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return fake


def run_download(tmp_path: Path, *extra: str):
    return CliRunner().invoke(app, ["download", str(tmp_path / "models"), *extra])


def expected_base(with_t5: bool) -> set[str]:
    folders = DIFFUSERS_FOLDERS - (set() if with_t5 else {"text_encoder_3", "tokenizer_3"})
    return {name for name in BASE_FILES if name == "model_index.json" or name.split("/")[0] in folders}


@pytest.mark.parametrize("with_t5", [True, False], ids=["with-t5", "no-t5"])
def test_download_takes_exactly_the_diffusers_files(hub, tmp_path, with_t5):
    result = run_download(tmp_path, *([] if with_t5 else ["--no-t5"]))
    assert result.exit_code == 0, result.output

    base = hub.downloaded[download.BASE_REPO]
    assert set(base) == expected_base(with_t5)
    assert not any(name.startswith("text_encoders/") for name in base)
    assert not any("/" not in name and name.endswith(".safetensors") for name in base)
    assert set(hub.downloaded[download.CONTROLNET_REPO]) == {"config.json", "diffusion_pytorch_model.safetensors"}
    # SD3 Medium: about 15.5 GB with T5, 6 GB without; the ControlNet adds 1.19 GB.
    base_bytes = sum(base.values())
    assert base_bytes <= (16 * GB if with_t5 else 6.5 * GB)
    assert base_bytes == pytest.approx(15.5 * GB if with_t5 else 5.98 * GB, rel=0.01)
    assert sum(hub.downloaded[download.CONTROLNET_REPO].values()) == pytest.approx(1.19 * GB, rel=1e-6)
    assert (tmp_path / "models" / "base" / "model_index.json").is_file()
    assert f"--model {tmp_path / 'models' / 'base'} --controlnet {tmp_path / 'models' / 'controlnet'}" in result.output


def test_the_whole_selection_loads_with_diffusers_folder_rules(hub, tmp_path):
    """Every folder model_index.json names is complete: its config and all its weight shards or tokenizer files."""
    run_download(tmp_path)
    base = hub.downloaded[download.BASE_REPO]
    for folder in DIFFUSERS_FOLDERS:
        in_repo = {name for name in BASE_FILES if name.startswith(folder + "/")}
        assert in_repo and in_repo <= set(base), folder


def test_total_is_printed_before_any_byte_is_downloaded(hub, tmp_path):
    result = run_download(tmp_path)
    assert result.exit_code == 0, result.output
    # Both dry runs (listing and sizes) come before the first real download.
    assert [dry for _, dry in hub.calls] == [True, True, False, False]
    total = sum(sum(files.values()) for files in hub.downloaded.values())
    assert f"to download: {download.gigabytes(total)} of {download.gigabytes(total)}" in result.output
    assert "16.7 GB" in result.output
    assert result.output.index("to download") < result.output.index("weights ready")


def test_not_enough_disk_space_is_refused_before_downloading(hub, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(100 * GB, 95 * GB, 5 * GB))
    result = run_download(tmp_path)
    assert result.exit_code == 2
    assert "has 5.0 GB free but the download needs 16.7 GB" in result.output
    assert "--no-t5" in result.output
    assert not hub.downloaded
    assert all(dry for _, dry in hub.calls)


def test_an_interrupted_download_resumes_and_counts_only_what_is_missing(hub, tmp_path, monkeypatch):
    transformer = tmp_path / "models" / "base" / "transformer" / "diffusion_pytorch_model.safetensors"
    transformer.parent.mkdir(parents=True)
    transformer.write_bytes(b"already here")
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    # 14 GB free: too little for the whole 16.7 GB, enough for the 12.5 GB still missing (+1 GB to spare).
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(100 * GB, 86 * GB, 14 * GB))
    result = run_download(tmp_path)
    assert result.exit_code == 0, result.output
    assert "4.2 GB already there" in result.output
    assert "transformer/diffusion_pytorch_model.safetensors" not in hub.downloaded[download.BASE_REPO]
    assert transformer.read_bytes() == b"already here"


def test_a_gated_repository_says_how_to_get_access(monkeypatch, tmp_path):
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import DryRunError, GatedRepoError

    response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    gated = GatedRepoError("Access to model is restricted", response=response)
    try:
        raise DryRunError("Dry run cannot be performed as the repository cannot be accessed.") from gated
    except DryRunError as exc:
        error = exc
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(error=error))
    result = run_download(tmp_path)
    assert result.exit_code == 2
    assert "is gated: accept its licence at https://huggingface.co/stabilityai/" in result.output
    assert "Traceback" not in result.output
