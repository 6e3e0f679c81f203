"""The models every export path is checked on (shared by the tests in tests/export/)."""

from __future__ import annotations

import torch
from torch import nn

from course_lib.models import ConditionalModel, SmallCNN, make_mlp


def trained_cnn() -> SmallCNN:
    """A SmallCNN whose BatchNorm has non-trivial running statistics (as after training)."""
    torch.manual_seed(1)
    model = SmallCNN().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return model.eval()


MODELS = {
    "mlp": (make_mlp, (10,)),
    "cnn": (trained_cnn, (3, 32, 32)),
    "conditional": (ConditionalModel, (10,)),
}

BATCH_SIZES = (1, 2, 13)


def assert_parity(model, run, shape, batch_sizes=BATCH_SIZES, **kwargs) -> None:
    """``run`` (a loaded or exported model) gives ``model``'s outputs at each batch size."""
    for batch in batch_sizes:
        x = torch.randn(batch, *shape)
        with torch.inference_mode():
            expected = model(x, **kwargs)
            got = run(x, **kwargs)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


class SignBranch(nn.Module):
    """A data-dependent branch written as a Python if: tracing bakes in one side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


class SignBranchCond(nn.Module):
    """The same branch with torch.cond: torch.export keeps both sides."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: -t, (x,))


# Models the course never saw (issue 11): each a different shape of input, output or module state.
class _ConvNet(nn.Module):
    """A CNN with BatchNorm and Dropout, to be left in training mode by its caller."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x).flatten(1)))


def cnn_left_in_train_mode() -> nn.Module:
    """Trained a little (BatchNorm has running statistics), then never switched to eval."""
    model = _ConvNet().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16) * 2 + 0.5)
    return model


class LstmTagger(nn.Module):
    """A two-layer LSTM over a sequence, classifying from its last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class MaskedEncoder(nn.Module):
    """A Transformer encoder with a key padding mask (True = padding), mean-pooled over tokens."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(x, src_key_padding_mask=padding_mask)
        keep = (~padding_mask).unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * keep).sum(1) / keep.sum(1))


def padding_mask(batch: int, length: int) -> torch.Tensor:
    """Row i pads its last ``i % length`` tokens (row 0 pads none; no row pads all)."""
    positions = torch.arange(length)
    pads = torch.arange(batch) % length
    return positions.unsqueeze(0) >= (length - pads).unsqueeze(1)


class TwoInputsTupleOutput(nn.Module):
    """An image and a feature vector in; logits and an embedding out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Linear(4 + 5, 8)
        self.head = nn.Linear(8, 3)

    def forward(
        self, image: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.conv(image).relu().mean(dim=(2, 3))
        embedding = self.mix(torch.cat([pooled, features], dim=1)).tanh()
        return self.head(embedding), embedding


class ResidualBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with BatchNorm, and the skip connection."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + x).relu()


def trained_residual_block() -> ResidualBlock:
    model = ResidualBlock().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 8, 12, 12) * 1.5 + 0.3)
    return model.eval()


def _tagger() -> nn.Module:
    return LstmTagger().eval()


def _encoder() -> nn.Module:
    return MaskedEncoder().eval()


def _two_inputs() -> nn.Module:
    return TwoInputsTupleOutput().eval()


# name -> (constructor, example inputs for a batch of ``n``)
FOREIGN_MODELS = {
    "cnn_train_mode": (cnn_left_in_train_mode, lambda n: (torch.randn(n, 3, 16, 16),)),
    "lstm": (_tagger, lambda n: (torch.randn(n, 7, 6),)),
    "transformer_mask": (_encoder, lambda n: (torch.randn(n, 5, 16), padding_mask(n, 5))),
    "two_inputs_tuple": (_two_inputs, lambda n: (torch.randn(n, 1, 8, 8), torch.randn(n, 5))),
    "resnet_block": (trained_residual_block, lambda n: (torch.randn(n, 8, 12, 12),)),
}
