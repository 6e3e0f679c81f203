"""Small seeded synthetic datasets, made in code so that the course never downloads anything."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "make_image_data",
    "make_loaders",
    "make_regression_data",
]


def make_regression_data(
    n_samples: int = 512, in_features: int = 10, out_features: int = 5, *, seed: int = 0
) -> TensorDataset:
    """Inputs ``x ~ N(0, 1)`` and targets from a fixed random linear map plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, in_features, generator=gen)
    true_map = torch.randn(in_features, out_features, generator=gen) / in_features**0.5
    y = torch.tanh(x @ true_map) + 0.05 * torch.randn(n_samples, out_features, generator=gen)
    return TensorDataset(x, y)


def make_image_data(
    n_samples: int = 256, num_classes: int = 10, image_size: int = 32, *, seed: int = 0
) -> TensorDataset:
    """3-channel images whose class is encoded in a colour-and-position pattern, plus noise.

    Learnable in a few epochs by a small CNN, so a notebook can show real training progress.

    Taught in notebooks/04b_partial_loading_in_depth.ipynb.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n_samples,), generator=gen)
    prototypes = torch.randn(num_classes, 3, image_size, image_size, generator=gen)
    images = prototypes[labels] + 0.8 * torch.randn(
        n_samples, 3, image_size, image_size, generator=gen
    )
    return TensorDataset(images, labels)


def make_loaders(
    dataset: TensorDataset, *, batch_size: int = 32, val_fraction: float = 0.25, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Split ``dataset`` into shuffled training and ordered validation loaders.

    The training loader shuffles with the global torch RNG, so the order of a resumed run depends on
    the RNG state a checkpoint restores: this is what chapter 6.3.3 demonstrates.
    """
    n_val = int(len(dataset) * val_fraction)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=gen)
    train_set = torch.utils.data.Subset(dataset, order[n_val:].tolist())
    val_set = torch.utils.data.Subset(dataset, order[:n_val].tolist())
    return (
        DataLoader(train_set, batch_size=batch_size, shuffle=True),
        DataLoader(val_set, batch_size=batch_size, shuffle=False),
    )
