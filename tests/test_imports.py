"""API-only processes (a stateless replica behind --broker, `sd3pose --help`) must start fast and small."""

from __future__ import annotations

import subprocess
import sys


def test_the_api_and_the_cli_do_not_import_the_model_stack() -> None:
    code = (
        "import sys, sd3pose.cli, sd3pose.service.app, sd3pose.distributed.service, sd3pose.request; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'mediapipe') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "[]"


def test_lazy_package_names_still_resolve() -> None:
    from sd3pose.engine import Engine, EngineJob
    from sd3pose.sampling import SAMPLER_NAMES, get_sigmas, sample

    assert callable(sample) and callable(get_sigmas) and len(SAMPLER_NAMES) == 27
    assert Engine.__name__ == "Engine" and EngineJob.__name__ == "EngineJob"
