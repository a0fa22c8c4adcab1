"""Model versions: the zero-shot default, storing and loading (through the model store, sha256-verified,
once per worker process), activation and the promotion gate."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from catalog_review.models import ModelVersion
from catalog_review.services import model_store
from ml_worker.config import MapsConfig
from ml_worker.ensemble import CrossFitModel, load_cross_fit, save_cross_fit

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


def version_named(name: str | None) -> ModelVersion:
    """The version called `name`, or the active one for None; LookupError naming the known ones."""
    if not name:
        return active_version()
    found = ModelVersion.objects.filter(name=name).first()
    if found is None:
        names = ", ".join(ModelVersion.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise LookupError(f"no model version named {name!r} (known: {names})")
    return found


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
            directory = model_store.local_copy(version.checkpoint_path, version.checkpoint_sha256)
            model = load_cross_fit(directory, expected_sha256=version.checkpoint_sha256)
        _loaded.clear()  # one version in memory per worker process
        _loaded[key] = model
    return _loaded[key]


def store_version(model: CrossFitModel, name: str, *, metadata: dict | None = None) -> str:
    """Save a trained version into the model store under `name` (and keep this worker's copy in
    MODEL_DIR); return its manifest's sha256, what the version row records."""
    settings.MODEL_DIR.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=settings.MODEL_DIR, prefix=f".build-{name}-"))
    try:
        digest = save_cross_fit(model, building, metadata=metadata)
        model_store.publish(building, name)
        target = settings.MODEL_DIR / name
        if not target.exists():
            building.rename(target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return digest


REVIEW_GATE_KEYS = ("review_same_family_ap", "review_same_product_ap")


def gate_score(metrics: dict, review_keys: tuple[str, ...]) -> float:
    """The number the promotion gate compares: the planted-error PR-AUC, averaged with the AP of the
    pair heads on held-out reviewer labels (`review_keys`, those both versions were measured on)."""
    planted = metrics["pr_auc"]
    if not review_keys:
        return planted
    return (planted + sum(metrics[k] for k in review_keys) / len(review_keys)) / 2


NOISE_Z = 1.645  # one-sided 95%: a difference the validation set's own noise exceeds 1 time in 20


def promotion_decision(
    new_metrics: dict, active_metrics: dict | None, noise: dict | None = None
) -> tuple[bool, str]:
    """Activate only when the new version is not worse than the active one on the same validation
    data: planted errors in held-out families, and, once there are at least
    PROMOTION_MIN_REVIEW_PAIRS of them, the reviewer labels of held-out families (real errors weigh
    as much as planted ones). "Worse" means by more than PROMOTION_TOLERANCE and, where the training
    measured it (`noise`: ml_worker.validation.gate_noise, a paired bootstrap over the validation
    families), by more than the validation set's own noise: a difference that drawing the families
    again would produce 1 time in 20 does not refuse a version."""
    new = new_metrics.get("pr_auc")
    if new is None:
        return False, "the new version has no validation PR-AUC"
    if not active_metrics or active_metrics.get("pr_auc") is None:
        return True, f"validation PR-AUC {new:.4f}; nothing to compare with"
    enough = (
        min(new_metrics.get("validation_review_pairs", 0), active_metrics.get("validation_review_pairs", 0))
        >= settings.PROMOTION_MIN_REVIEW_PAIRS
    )
    keys = tuple(
        k
        for k in REVIEW_GATE_KEYS
        if enough and new_metrics.get(k) is not None and active_metrics.get(k) is not None
    )
    new_score, old_score = gate_score(new_metrics, keys), gate_score(active_metrics, keys)
    what = "validation PR-AUC"
    if keys:
        parts = ", ".join(
            f"{k.removeprefix('review_')} {new_metrics[k]:.4f} vs {active_metrics[k]:.4f}" for k in keys
        )
        what = (
            f"validation score (planted PR-AUC {new:.4f} vs {active_metrics['pr_auc']:.4f}; "
            f"{new_metrics['validation_review_pairs']} held-out reviewer pairs: {parts})"
        )
    spread = _noise_of(noise, keys)
    allowed = max(settings.PROMOTION_TOLERANCE, spread or 0.0)
    if new_score >= old_score:
        return True, f"{what}: {new_score:.4f} vs active {old_score:.4f}, not worse"
    if new_score >= old_score - allowed:
        within = f"the validation noise ({spread:.4f})" if spread and spread >= allowed else "the tolerance"
        return True, (
            f"{what}: {new_score:.4f} vs active {old_score:.4f}, "
            f"{old_score - new_score:.4f} lower: within {within}, not worse"
        )
    beyond = f", beyond the validation noise ({spread:.4f})" if spread is not None else ""
    return False, f"{what}: {new_score:.4f} is worse than the active version's {old_score:.4f}{beyond}"


def _noise_of(noise: dict | None, keys: tuple[str, ...]) -> float | None:
    """The difference the validation set's noise reaches 1 time in 20, for the gate score over
    `keys` (None: not measured, e.g. a version compared with another than the one it trained beside)."""
    entry = (noise or {}).get("gate_with_review" if keys else "pr_auc")
    if not entry or (keys and entry.get("keys") != sorted(keys)):
        return None
    return NOISE_Z * entry["sd"]
