"""Model versions: the zero-shot default, loading (sha256-verified, once per worker process),
activation and the promotion gate."""

from __future__ import annotations

from pathlib import Path

import torch
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from catalog_review.models import ModelVersion
from ml_worker.config import MapsConfig
from ml_worker.ensemble import CrossFitModel, load_cross_fit

ZERO_SHOT = "zero-shot"

_loaded: dict[tuple[int, str], CrossFitModel] = {}


def ml_device() -> str:
    if settings.ML_DEVICE != "auto":
        return settings.ML_DEVICE
    return "cuda" if torch.cuda.is_available() else "cpu"


def zero_shot_version() -> ModelVersion:
    version, _ = ModelVersion.objects.get_or_create(
        name=ZERO_SHOT,
        defaults={
            "config": {"kind": ZERO_SHOT, "model": MapsConfig().to_dict()},
            "metrics": {},
            "training_data": {"note": "pretrained backbones only, no training"},
        },
    )
    return version


def active_version() -> ModelVersion:
    """The active version. On first use the zero-shot version is created and activated, so a fresh
    installation scores before anything was trained."""
    version = ModelVersion.objects.filter(is_active=True).first()
    if version:
        return version
    try:
        with transaction.atomic():
            version = zero_shot_version()
            activate_version(version)
    except IntegrityError:  # another process activated one at the same moment
        pass
    return ModelVersion.objects.get(is_active=True)


def activate_version(version: ModelVersion) -> None:
    with transaction.atomic():
        ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
        version.is_active = True
        version.activated_at = timezone.now()
        version.save(update_fields=["is_active", "activated_at"])


def load_model(version: ModelVersion) -> CrossFitModel:
    """The version's models, loaded once per process; a checkpoint whose sha256 does not match the
    one recorded at registration is refused (ml_worker.checkpoint.CheckpointError)."""
    key = (version.pk, version.checkpoint_sha256)
    if key not in _loaded:
        if version.config.get("kind") == ZERO_SHOT:
            model = CrossFitModel.zero_shot(MapsConfig.from_dict(version.config["model"]))
        else:
            model = load_cross_fit(Path(version.checkpoint_path), expected_sha256=version.checkpoint_sha256)
        _loaded.clear()  # one version in memory per worker process
        _loaded[key] = model
    return _loaded[key]


def promotion_decision(new_metrics: dict, active_metrics: dict | None) -> tuple[bool, str]:
    """Activate only when the new version's validation PR-AUC is not worse than the active one's,
    both measured on the same planted errors."""
    new = new_metrics.get("pr_auc")
    if new is None:
        return False, "the new version has no validation PR-AUC"
    if not active_metrics or active_metrics.get("pr_auc") is None:
        return True, f"validation PR-AUC {new:.4f}; nothing to compare with"
    old = active_metrics["pr_auc"]
    if new >= old - settings.PROMOTION_TOLERANCE:
        return True, f"validation PR-AUC {new:.4f} vs active {old:.4f}: not worse"
    return False, f"validation PR-AUC {new:.4f} is worse than the active version's {old:.4f}"
