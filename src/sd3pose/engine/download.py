"""Fetch the real weights with huggingface_hub: SD3 Medium (gated: needs a token) and the pose ControlNet.

DIR/base receives the diffusers folders of stabilityai/stable-diffusion-3-medium-diffusers and
DIR/controlnet the config and weights of InstantX/SD3-Controlnet-Pose: exactly the files a
diffusers load reads. The base repository also holds single-file checkpoints at its root and a
`text_encoders/` folder of them (about 16 GB that diffusers never reads); neither is selected.

A dry run lists the selected files and their sizes first, so the total is known (and the free
disk space checked) before any byte moves; huggingface_hub then downloads with its progress
bar. Files already in DIR are skipped, so an interrupted download resumes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sd3pose.errors import ModelLoadError

logger = logging.getLogger(__name__)

BASE_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"
CONTROLNET_REPO = "InstantX/SD3-Controlnet-Pose"
# The folders a diffusers load of the SD3 pipeline reads (model_index.json names them), and their file kinds.
BASE_FOLDERS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae")
T5_FOLDERS = ("text_encoder_3", "tokenizer_3")
FILE_KINDS = ("*.json", "*.safetensors", "*.txt", "*.model")
CONTROLNET_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]
# Room left on the disk beyond the files themselves (huggingface_hub's metadata, the rest of the system).
DISK_MARGIN_BYTES = 10**9


def base_patterns(with_t5: bool) -> list[str]:
    """The allow patterns for the base repository: model_index.json and each diffusers folder's files.

    Each pattern names its folder, so neither the root checkpoints nor `text_encoders/` can match
    (huggingface_hub's `*` also matches `/`, so a pattern like `*/*.safetensors` would take both).
    """
    folders = BASE_FOLDERS + (T5_FOLDERS if with_t5 else ())
    return ["model_index.json"] + [f"{folder}/{kind}" for folder in folders for kind in FILE_KINDS]


@dataclass(frozen=True)
class RepoPlan:
    """What one repository contributes: its selected files and their sizes in bytes."""

    repo: str
    target: Path
    allow_patterns: list[str]
    sizes: dict[str, int]  # every selected file
    missing: dict[str, int]  # the selected files not yet in `target`

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def missing_bytes(self) -> int:
        return sum(self.missing.values())


@dataclass(frozen=True)
class DownloadPlan:
    repos: list[RepoPlan]

    @property
    def total_bytes(self) -> int:
        return sum(repo.total_bytes for repo in self.repos)

    @property
    def missing_bytes(self) -> int:
        return sum(repo.missing_bytes for repo in self.repos)


def gigabytes(size: int) -> str:
    """Bytes as decimal gigabytes, the unit the hub shows ('15.5 GB')."""
    return f"{size / 1e9:.1f} GB"


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _hub_error(repo: str, exc: BaseException) -> ModelLoadError:
    """One sentence with the fix for whatever huggingface_hub raised (a dry run wraps the real cause)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain = _cause_chain(exc)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return ModelLoadError(
            f"{repo} is gated: accept its licence at https://huggingface.co/{repo} and pass "
            "--token (or set HF_TOKEN) with a Hugging Face access token"
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return ModelLoadError(
            f"{repo} was not found or needs a token; check the name, or pass --token (or set HF_TOKEN)"
        )
    first = next((str(e).strip().splitlines()[0] for e in reversed(chain) if str(e).strip()), repr(exc))
    return ModelLoadError(
        f"downloading {repo} failed ({first[:200]}); check the network and disk space and run the command again "
        "(it resumes)"
    )


def plan_download(directory: Path, *, token: str | None, with_t5: bool) -> DownloadPlan:
    """Ask the hub which files the download selects and how large they are (nothing is downloaded)."""
    from huggingface_hub import snapshot_download

    plans = []
    for repo, target, allow in (
        (BASE_REPO, directory / "base", base_patterns(with_t5)),
        (CONTROLNET_REPO, directory / "controlnet", CONTROLNET_PATTERNS),
    ):
        try:
            files = snapshot_download(repo, local_dir=target, allow_patterns=allow, token=token, dry_run=True)
        except Exception as exc:  # the hub boundary: whatever it raises becomes one sentence
            raise _hub_error(repo, exc) from exc
        sizes = {f.filename: int(f.file_size or 0) for f in files}
        missing = {f.filename: int(f.file_size or 0) for f in files if f.will_download}
        plans.append(RepoPlan(repo, target, allow, sizes, missing))
    return DownloadPlan(plans)


def free_bytes(directory: Path) -> int:
    """Free space on the file system that will hold `directory` (its nearest existing ancestor)."""
    existing = directory.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_free_space(plan: DownloadPlan, directory: Path) -> None:
    """Raise ModelLoadError when the missing files (plus a margin) do not fit on the disk."""
    needed = plan.missing_bytes
    if needed == 0:
        return
    free = free_bytes(directory)
    if free < needed + DISK_MARGIN_BYTES:
        raise ModelLoadError(
            f"{str(directory)!r} has {gigabytes(free)} free but the download needs {gigabytes(needed)} "
            f"(plus {gigabytes(DISK_MARGIN_BYTES)} to spare); free some space, choose another folder, "
            "or pass --no-t5 to skip the 9.5 GB T5 encoder"
        )


def describe(plan: DownloadPlan) -> str:
    """The plan in one line per repository and a total, for the user to read before the download starts."""
    lines = []
    for repo in plan.repos:
        have = repo.total_bytes - repo.missing_bytes
        already = f", {gigabytes(have)} already there" if have else ""
        lines.append(f"  {repo.repo}: {len(repo.sizes)} files, {gigabytes(repo.total_bytes)}{already} -> {repo.target}")
    lines.append(f"  to download: {gigabytes(plan.missing_bytes)} of {gigabytes(plan.total_bytes)}")
    return "\n".join(lines)


def download_models(
    directory: str | Path,
    *,
    token: str | None = None,
    with_t5: bool = True,
    announce: Callable[[str], None] = logger.info,
) -> tuple[Path, Path]:
    """Download both models into DIR/base and DIR/controlnet; return the two folders.

    `announce` receives the plan (files, sizes, total) before anything is downloaded.
    """
    from huggingface_hub import snapshot_download

    directory = Path(directory).expanduser()
    token = token or os.environ.get("HF_TOKEN") or None
    plan = plan_download(directory, token=token, with_t5=with_t5)
    announce("download plan" + (" (without T5)" if not with_t5 else "") + ":\n" + describe(plan))
    check_free_space(plan, directory)
    for repo in plan.repos:
        if not repo.missing:
            logger.info("%s is already complete in %s", repo.repo, repo.target)
            continue
        logger.info("downloading %s (%s) into %s", repo.repo, gigabytes(repo.missing_bytes), repo.target)
        try:
            snapshot_download(repo.repo, local_dir=repo.target, allow_patterns=repo.allow_patterns, token=token)
        except Exception as exc:  # the hub boundary
            raise _hub_error(repo.repo, exc) from exc
        logger.info("%s is ready in %s", repo.repo, repo.target)
    return directory / "base", directory / "controlnet"
