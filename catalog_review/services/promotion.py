"""Promotion: whether a model version may become the active one (the gate), activating it, and the
re-score that follows. One home for the admin's "activate" button and a train job's `activate`."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from catalog_review.models import Job, ModelVersion
from catalog_review.services.model_versions import ZERO_SHOT, activate_version, promotion_decision
from catalog_review.services.scoring import score_start


@dataclass(frozen=True)
class Promotion:
    activated: bool
    gate: str  # what the gate found, said to the admin (and kept in a train job's counts)
    rescore_job: Job | None = None


def promotion_gate(version: ModelVersion) -> tuple[bool, str]:
    """May `version` replace the active version? Compared on the same validation data where it was
    trained beside the active one (its `parent_on_same_data`, with the measured validation noise), else
    against the active version's own validation figures. The zero-shot version (the packaged backbones)
    is always allowed back."""
    if version.name == ZERO_SHOT:
        return True, "the zero-shot version (the packaged backbones) can always be reactivated"
    metrics = version.metrics or {}
    active = ModelVersion.objects.filter(is_active=True).first()
    beside_active = active is not None and version.parent_id == active.pk
    paired = metrics.get("parent_on_same_data") if beside_active else None
    return promotion_decision(
        metrics.get("validation") or {},
        paired or (active.metrics.get("validation") if active and active.metrics else None),
        metrics.get("gate_noise") if paired else None,
    )


def promote(version: ModelVersion, *, force: bool = False, requested_by=None, reason: str = "") -> Promotion:
    """Activate `version` if the gate allows it (or `force`), then re-score the catalogue with it
    (SCORE_AFTER_ACTIVATION: its flags replace the old version's), the job queued after commit."""
    ok, gate = promotion_gate(version)
    if not (ok or force):
        return Promotion(activated=False, gate=gate)
    with transaction.atomic():
        activate_version(version)
        rescore = None
        if settings.SCORE_AFTER_ACTIVATION:
            rescore = score_start(version=version, requested_by=requested_by, scope={"reason": reason})
    return Promotion(
        activated=True, gate=gate if ok else f"{gate} (activated anyway: forced)", rescore_job=rescore
    )
