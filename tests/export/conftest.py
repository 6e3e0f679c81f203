"""Fixtures shared by the export tests (the models themselves are in export_models.py)."""

from __future__ import annotations

import pytest
import torch
from export_models import MODELS


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_shape(request):
    """Each of the course's models in eval mode, with the shape of one input (no batch)."""
    make, shape = MODELS[request.param]
    torch.manual_seed(0)
    return make().eval(), shape
