"""Configuration of the MAPS model and its training, as dataclasses saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class MapsConfig:
    # inputs (cached backbone features)
    top_channels: int = 1280  # EfficientNet-Lite0 head map, 7x7 at 224 px
    mid_channels: int = 112  # one stage earlier, 14x14
    text_dim: int = 384  # MiniLM token states
    # model
    d_model: int = 256
    heads: int = 4
    title_pool_heads: int = 4
    embed_dim: int = 256
    local_grid: int = 5  # the attended crop is sampled to local_grid x local_grid on the 14x14 map
    dropout: float = 0.1
    # variants for ablations: "multimodal" | "image" | "title"; title_guidance=False = pooled concat
    modality: str = "multimodal"
    title_guidance: bool = True
    # fine-tune the image backbone after its 14x14 map (EfficientNet-Lite0's last two stages and its
    # head conv, initialised from the packaged weights) on the cached 14x14 maps; False = frozen 7x7 maps
    tune_backbone_top: bool = False
    backbone_top_widths: list[int] = field(default_factory=lambda: [192, 320])
    # end-to-end fine-tuning (the GPU path): the model owns both backbones whole and trains them from
    # pixels and token ids (bf16 autocast on CUDA); scoring then runs the model's own backbones
    end_to_end: bool = False
    # backbones (None = the packaged defaults; any local Hugging Face directory works for text)
    image_weights: str | None = None
    text_model_dir: str | None = None
    image_size: int = 224
    max_tokens: int = 32

    @classmethod
    def tiny(cls) -> MapsConfig:
        return cls(
            top_channels=16,
            mid_channels=8,
            text_dim=12,
            d_model=16,
            heads=2,
            title_pool_heads=2,
            embed_dim=8,
            local_grid=3,
            dropout=0.0,
            backbone_top_widths=[8, 8],
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MapsConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown MapsConfig fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 200
    families_per_batch: int = 24  # P
    listings_per_family: int = 3  # K
    lr: float = 1e-3
    weight_decay: float = 1e-4
    folds: int = 2  # k-fold cross-fitting by family: each family is scored by a model that never saw it
    # loss weights
    w_pair: float = 1.0
    w_product: float = 1.0
    w_proxy: float = 0.5
    w_align: float = 0.5
    w_review: float = 2.0  # reviewer-labelled pairs weigh more than the (noisy) family pairs
    review_pairs_per_step: int = 16
    backbone_lr_scale: float = 0.1  # fine-tuned backbone layers (tune_backbone_top, end_to_end) learn slower
    p_adversarial_title: float = 0.2  # share of anchors given a rewritten, mismatching title (paper 3)
    p_swapped_image: float = 0.35  # share of anchors shown a same-category image of another family
    proxy_levels_weight: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    kmeans_levels: int = 1  # upper proxy levels built by k-means when no category path exists
    kmeans_refresh_steps: int = 100  # T

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return cls(**{k: v for k, v in data.items() if k in {f.name for f in fields(cls)}})


def save_json(obj, path: Path) -> None:
    Path(path).write_text(json.dumps(obj.to_dict(), indent=1, sort_keys=True) + "\n")


def add_backbone_arguments(parser) -> None:
    """The command-line choices of how a training treats the backbones (`evaluate`, the benchmarks)."""
    parser.add_argument(
        "--tune-backbone-top",
        action="store_true",
        help="fine-tune EfficientNet-Lite0's last two stages and head conv from the cached 14x14 maps",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="fine-tune both backbones whole from pixels and token ids (the GPU path; slow on a CPU)",
    )
