"""k-diffusion 0.1.1.post1 (MIT) as the reference for the samplers ComfyUI takes from it unchanged.

ComfyUI runs k-diffusion's euler (also its ddim), heun, dpm_2, lms, dpm_fast, dpm_adaptive and
dpmpp_2m on SD3's flow sigmas as they are -- no change of variables -- so k-diffusion fed those
sigmas must give our results (lms with ComfyUI's one addition: its step into 0 lands on D).
dpm_fast and dpm_adaptive get ComfyUI's range: sigma_max = sigmas[0], sigma_min = the last sigma,
or the one before it when the last is 0. Its Brownian tree noise sampler, seeded per row, is the
reference for our SDE samplers' default draws.

k-diffusion's sampling.py is loaded on its own: its package __init__ and the training-only modules
its utils import (torchvision) are never loaded, and torchdiffeq (used only by log_likelihood) is
stubbed. Tolerance: 1e-10 of the output's scale in float64 (only the order of float operations
differs); the Brownian draws 1e-5 (the trees see float32 times on our side).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
from gaussian_problem import GaussianData

from sd3pose.sampling import SCHEDULER_NAMES, get_sigmas, sample


def _load_kdiffusion_sampling() -> types.ModuleType:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (make install adds it with --no-deps)")
    root = Path(spec.submodule_search_locations[0])
    package = types.ModuleType("_kdiffusion_reference")
    package.__path__ = [str(root)]
    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = types.ModuleType("torchvision.transforms.functional")
    torchvision.transforms = transforms
    stubs = {
        "_kdiffusion_reference": package,
        "torchdiffeq": types.SimpleNamespace(odeint=None),
        "torchvision": torchvision,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": transforms.functional,
    }
    with mock.patch.dict(sys.modules, stubs):
        modules = {}
        for name in ("utils", "sampling"):
            sub = importlib.util.spec_from_file_location(f"_kdiffusion_reference.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(sub)
            sys.modules[sub.name] = module
            sub.loader.exec_module(module)
            setattr(package, name, module)
            modules[name] = module
    return modules["sampling"]


K = _load_kdiffusion_sampling()
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # k-diffusion's torch.tensor(t)


class KModel:
    """Our Gaussian problem's denoiser with k-diffusion's calling convention (sigma per row)."""

    def __init__(self, problem: GaussianData) -> None:
        self.problem = problem

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        assert torch.all(sigma == sigma[0])
        return self.problem(x, sigma[0])


def _reference(name: str, problem: GaussianData, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    model = KModel(problem)
    if name in ("dpm_fast", "dpm_adaptive"):
        sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
        if name == "dpm_fast":
            return K.sample_dpm_fast(model, x, sigma_min, sigmas[0], len(sigmas) - 1, disable=True)
        return K.sample_dpm_adaptive(model, x, sigma_min, sigmas[0], disable=True)
    if name == "lms":
        # ComfyUI adds one rule to k-diffusion's lms: the step into sigma = 0 lands on the prediction.
        x = K.sample_lms(model, x, sigmas[:-1], disable=True)
        return model(x, sigmas[-2:-1]) if sigmas[-1] == 0 else K.sample_lms(model, x, sigmas[-2:], disable=True)
    function = getattr(K, f"sample_{'euler' if name == 'ddim' else name}")
    return function(model, x, sigmas, disable=True)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25])
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("name", ["euler", "ddim", "heun", "dpm_2", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2m"])
def test_equals_kdiffusion_on_flow_sigmas(gaussian, name: str, scheduler: str, steps: int) -> None:
    sigmas = get_sigmas(scheduler, steps, sampler=name).double()
    x = sigmas[0] * gaussian.noise(2)
    ours = sample(name, gaussian, x, sigmas)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # k-diffusion builds dpm_fast's grid in the default dtype
    try:
        reference = _reference(name, gaussian, x.clone(), sigmas)
    finally:
        torch.set_default_dtype(previous)
    assert float((ours - reference).abs().max()) <= 1e-10 * float(reference.abs().max())


@pytest.mark.filterwarnings("ignore:Should have")  # k-diffusion's tree: torchsde clamps a query at sigma_min
@pytest.mark.parametrize("scheduler", ["karras", "ddim_uniform"])  # from sigma 1, and from below it
@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_samplers_draw_from_a_brownian_tree_per_row_seeded_like_kdiffusion(name: str, scheduler: str) -> None:
    problem = GaussianData(dtype=torch.float32)
    sigmas = get_sigmas(scheduler, 8)
    x = sigmas[0] * problem.noise(2)
    seed = 698845
    ours = sample(name, problem, x, sigmas, seed=seed)
    positive = sigmas[sigmas > 0]
    tree = K.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=[seed, seed + 1])
    with_tree = sample(name, problem, x, sigmas, noise_sampler=lambda s, t: tree(s.float(), t.float()))
    torch.testing.assert_close(ours, with_tree, rtol=0, atol=1e-5)
    # ...and the draws matter: another seed gives another result.
    assert not torch.allclose(ours, sample(name, problem, x, sigmas, seed=seed + 7), atol=1e-3)
