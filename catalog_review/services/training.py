"""Training a new model version from the catalogue (a `train` job on the gpu queue).

The catalogue's families are the weak labels, corrected by reviewer labels in force: a listing a
reviewer confirmed as a wrong variant leaves its family (`training_families`). The trainer builds a
cross-fitted version (ml_worker.ensemble): fold models score the families they never saw, a final
model gives the embeddings. With TRAIN_END_TO_END (auto: on a CUDA worker) every member fine-tunes
its own copy of both backbones, and scoring reads the catalogue through them. Each fold model is
validated on errors planted into its held-out families, and the active version is measured on exactly
the same plants: the promotion gate compares the two. (How the version's evidence is weighed,
reviewer decisions included, is fitted by each score job: services/scoring.py, stage 0.) A version
starts from the active one's weights when it can (TRAIN_WARM_START, `warm_start_for`).
"""

from __future__ import annotations

import time

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from catalog_review import dispatch
from catalog_review.models import Flag, Job, LabelledPair, ModelVersion, Product
from catalog_review.schemas import TrainRequest
from catalog_review.services.jobs import (
    job_claim_run,
    job_create,
    job_raise_if_cancelled,
    job_set_progress,
)
from catalog_review.services.model_versions import (
    active_version,
    load_model,
    ml_device,
    store_version,
)
from catalog_review.services.promotion import Promotion, promote, promotion_gate
from catalog_review.services.review import (
    confirmed_wrong_variants,
    review_labels_in_force,
)
from catalog_review.services.scoring import product_listings
from ml_worker.config import MapsConfig, TrainConfig
from ml_worker.ensemble import train_cross_fit, warm_start_reason
from ml_worker.train import ReviewPairs, TrainingSet

MIN_FAMILIES = 4  # with 2+ listings each: fewer gives no negatives to learn from


class TrainingError(Exception):
    pass


def train_start(request: TrainRequest, *, requested_by=None, reason: str = "") -> Job:
    """Queue a train job (`reason`: what triggered it, shown on the job page: "admin", "api", "command");
    `request` says what to train (schemas.TrainRequest: validated by whoever built it)."""
    # what was asked (unset choices are left to the worker's settings) and what triggered it
    scope = {k: v for k, v in request.model_dump().items() if v is not None}
    scope |= {"folds": settings.TRAIN_FOLDS} | ({"reason": reason} if reason else {})
    with transaction.atomic():
        job = job_create(kind=Job.Kind.TRAIN, scope=scope, requested_by=requested_by)
        transaction.on_commit(lambda: dispatch.enqueue(dispatch.TRAIN_VERSION, job_id=job.pk))
    return job


def training_families(products: list[Product]) -> tuple[list[str], dict]:
    """The family label of each listing for training, corrected by reviewer labels in force (not
    retracted): a listing a reviewer confirmed as a wrong variant leaves its family (it becomes a
    family of its own, so it is no longer a positive of the family it was wrongly linked into).
    Returns the labels and the counts of reviewer labels used, by relation."""
    in_force = review_labels_in_force()
    moved_out = confirmed_wrong_variants()
    families = [f"reviewed-out:{p.sku}" if p.pk in moved_out else p.family.code for p in products]
    by_relation = dict(in_force.values_list("relation").annotate(n=Count("id")).order_by())
    return families, {
        "review_pairs": sum(by_relation.values()),
        "review_pairs_by_relation": by_relation,
        "listings_moved_out_of_families": len(moved_out & {p.pk for p in products}),
    }


def review_pairs_for(products: list[Product]) -> ReviewPairs:
    """Reviewer labels in force as training pairs (row = index into `products`): same / different
    family from wrong_variant decisions, same / different product from duplicate decisions."""

    row = {p.pk: i for i, p in enumerate(products)}
    a, b, head, target = [], [], [], []
    in_force = review_labels_in_force().values_list("a_id", "b_id", "relation", "decision__flag__kind")
    for a_id, b_id, relation, kind in in_force:
        if a_id not in row or b_id not in row:
            continue
        if relation == LabelledPair.Relation.SAME_FAMILY:
            h, same = 0, True
        elif relation == LabelledPair.Relation.SAME_PRODUCT:
            h, same = 1, True
        else:  # different: of family for a wrong variant, of product for a duplicate
            h, same = (0 if kind == Flag.Kind.WRONG_VARIANT else 1), False
        a.append(row[a_id])
        b.append(row[b_id])
        head.append(h)
        target.append(same)
    return ReviewPairs(
        np.array(a, dtype=np.int64),
        np.array(b, dtype=np.int64),
        np.array(head, dtype=np.int64),
        np.array(target, dtype=bool),
    )


def end_to_end_for(requested: bool | None, device: str) -> bool:
    """Whether a train job fine-tunes the backbones: as requested, else TRAIN_END_TO_END (auto: on a
    CUDA device)."""
    if requested is not None:
        return requested
    return settings.TRAIN_END_TO_END == "on" or (
        settings.TRAIN_END_TO_END == "auto" and device.startswith("cuda")
    )


def warm_start_for(requested: bool | None, parent: ModelVersion, config: MapsConfig, folds: int):
    """The active version's model to warm-start from, or None to train from scratch: as requested
    (True: it must be a usable start), else when TRAIN_WARM_START is on and it is one."""
    if requested is False or (requested is None and not settings.TRAIN_WARM_START):
        return None
    model = load_model(parent)
    reason = warm_start_reason(model, config, folds)
    if reason and requested:
        raise TrainingError(f"cannot warm-start from the active version {parent.name}: {reason}")
    return None if reason else model


def train_run(job_id: int, worker: str = "") -> str:
    if not job_claim_run(job_id=job_id, worker=worker):  # finished, or another delivery is training it
        job = Job.objects.get(pk=job_id)
        return "nothing to do" if job.is_finished else "running in another worker"
    job = Job.objects.get(pk=job_id)
    started = time.perf_counter()
    products = list(Product.objects.select_related("family", "category").order_by("id"))
    families, label_counts = training_families(products)
    sizes = {}
    for code in families:
        sizes[code] = sizes.get(code, 0) + 1
    trainable = sum(1 for n in sizes.values() if n >= 2)
    if trainable < MIN_FAMILIES:
        raise TrainingError(
            f"the catalogue has {trainable} families with 2+ listings; training needs at least {MIN_FAMILIES}"
        )
    scope = job.scope
    device = ml_device()
    end_to_end = end_to_end_for(scope.get("end_to_end"), device)
    config = MapsConfig(end_to_end=end_to_end)
    folds = scope.get("folds", 2)
    parent = active_version()
    start = warm_start_for(scope.get("warm_start"), parent, config, folds)
    steps = scope.get("steps") or (settings.TRAIN_WARM_STEPS if start else settings.TRAIN_STEPS)
    job.scope = {**scope, "steps": steps, "warm_start_from": parent.name if start else None}
    job.save(update_fields=["scope"])
    train_config = TrainConfig(steps=steps, folds=folds)
    runs = train_config.folds + 1 if train_config.folds > 1 else 1
    n = len(products)
    total = n + runs * train_config.steps
    job_set_progress(job=job, done=0, total=total, counts={"end_to_end": end_to_end}, phase="features")
    data = TrainingSet.of_listings(
        product_listings(products),
        config,
        device=device,
        families=families,
        review_pairs=review_pairs_for(products),
        cache_dir=settings.FEATURE_CACHE_DIR,
        progress=False,
        on_progress=lambda done, _n: _progress(job, done),
    )
    features_s = time.perf_counter() - started
    job_set_progress(job=job, done=n, phase="training")

    model, info = train_cross_fit(
        data,
        config,
        train_config,
        device=device,
        progress=False,
        on_progress=lambda done, _t: _progress(job, n + done),
        baseline=load_model(parent),  # the same object as `start` when warm (loaded once)
        warm_start=start,
    )
    name = f"maps-{timezone.now():%Y%m%d-%H%M%S}-j{job.pk}"
    digest = store_version(model, name, metadata={"train": train_config.to_dict(), "job": job.pk})
    validation = info.pop("validation")
    baseline = info.pop("baseline_validation", None)
    with transaction.atomic():
        version = ModelVersion.objects.create(
            name=name,
            checkpoint_path=name,
            checkpoint_sha256=digest,
            config={"kind": "maps-cross-fit", "model": config.to_dict(), "train": train_config.to_dict()},
            metrics={
                "validation": validation,
                "parent_on_same_data": baseline,
                "features_s": round(features_s, 1),
                "warm_start_from": parent.name if start else None,
                "total_s": round(time.perf_counter() - started, 1),
                **info,
            },
            training_data={
                "family_listings": n,
                "families": len(sizes),
                "trainable_families": trainable,
                **label_counts,
            },
            parent=parent,
            created_by=job.requested_by,
        )
        if scope.get("activate"):
            promotion = promote(
                version, force=bool(scope.get("force")), requested_by=job.requested_by, reason="training"
            )
        else:
            promotion = Promotion(activated=False, gate=promotion_gate(version)[1])
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.SUCCEEDED,
            finished_at=timezone.now(),
            done=total,
            counts={
                "model_version": name,
                "end_to_end": end_to_end,
                "activated": promotion.activated,
                "gate": promotion.gate,
                "validation": validation,
                "parent_on_same_data": baseline,
                "rescore_job": promotion.rescore_job.pk if promotion.rescore_job else None,
            },
        )
    return f"trained {name}"


def _progress(job: Job, done: int) -> None:
    job_raise_if_cancelled(job.pk)  # a cancelled training stops at its next report
    job_set_progress(job=job, done=done)
