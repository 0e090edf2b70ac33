"""Fixtures for the sampling tests (the problem itself lives in gaussian_problem.py)."""

from __future__ import annotations

import pytest
from gaussian_problem import GaussianData


@pytest.fixture
def gaussian() -> GaussianData:
    return GaussianData()
