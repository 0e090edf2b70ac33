"""Fetch the real weights with huggingface_hub: SD3 Medium (gated: needs a token) and the pose ControlNet.

DIR/base/ receives stabilityai/stable-diffusion-3-medium-diffusers (diffusers folders only, not the
single-file checkpoints) and DIR/controlnet/ receives InstantX/SD3-Controlnet-Pose. Kept out of the
test suite (it needs the network and a licence acceptance); reviewed by reading.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sd3pose.errors import ModelLoadError

logger = logging.getLogger(__name__)

BASE_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"
CONTROLNET_REPO = "InstantX/SD3-Controlnet-Pose"
# The diffusers folders of the base repo; its root also holds multi-GB single-file checkpoints we skip.
BASE_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.model"]
T5_PATTERNS = ["text_encoder_3/*", "tokenizer_3/*"]
CONTROLNET_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]


def download_models(
    directory: str | Path,
    *,
    token: str | None = None,
    with_t5: bool = True,
    base_repo: str = BASE_REPO,
    controlnet_repo: str = CONTROLNET_REPO,
) -> tuple[Path, Path]:
    """Download both models into DIR/base and DIR/controlnet; return the two folders.

    Already-downloaded files are skipped, so an interrupted download resumes.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    directory = Path(directory).expanduser()
    token = token or os.environ.get("HF_TOKEN") or None
    targets = [
        (base_repo, directory / "base", BASE_PATTERNS, [] if with_t5 else T5_PATTERNS),
        (controlnet_repo, directory / "controlnet", CONTROLNET_PATTERNS, []),
    ]
    for repo, target, allow, ignore in targets:
        logger.info("downloading %s into %s (this can take a while: SD3 Medium is about 10-15 GB)", repo, target)
        try:
            snapshot_download(repo, local_dir=target, allow_patterns=allow, ignore_patterns=ignore or None, token=token)
        except GatedRepoError as exc:
            raise ModelLoadError(
                f"{repo} is gated: accept its licence at https://huggingface.co/{repo} and pass "
                "--token (or set HF_TOKEN) with a Hugging Face access token"
            ) from exc
        except RepositoryNotFoundError as exc:
            raise ModelLoadError(
                f"{repo} was not found or needs a token; check the name, or pass --token (or set HF_TOKEN)"
            ) from exc
        except (HfHubHTTPError, OSError) as exc:
            raise ModelLoadError(
                f"downloading {repo} failed ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}); "
                "check the network and disk space and run the command again (it resumes)"
            ) from exc
        logger.info("%s is ready in %s", repo, target)
    return directory / "base", directory / "controlnet"
