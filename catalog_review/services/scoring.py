"""Scoring a catalogue (or a scope of it) with a model version, in stages of idempotent chunks.

0. fit (gpu queue), one task: the version's scorer fitted on the catalogue (up to SCORER_FIT_LISTINGS
   listings, whole families): own-evidence heads and the combiners, on errors planted into it with the
   reviewer decisions in force (ml_worker.evidence, through ml_worker.scoring.fit_catalogue_scorer, the
   routine `ml_worker.evaluate` runs) -> VersionScorer. A job over part of the catalogue reuses the
   version's latest scorer instead.
1. embed (gpu queue), one task per chunk of whole families: backbone features, the final model's
   vectors + attention map -> ProductEmbedding (upsert: one row per listing and version), and each
   listing's evidence channels and P(wrong variant) (the pair head of the fold model that never trained
   on its family, image / text / category agreement, its image against its own attributes and text).
2. flag (default queue), one task per chunk, once every embed chunk is done: duplicate candidates
   from a pgvector HNSW kNN search over the whole catalogue (fused, image and title vectors), P(duplicate)
   from the pair's channels; heatmaps rendered; then flags raised, updated in place, or marked stale.

A chunk is marked done in the same transaction that writes its results, so a re-delivered or
retried task writes nothing twice, and a worker killed mid-chunk leaves nothing half-written (the
message is re-delivered: acks_late + reject_on_worker_lost). The last chunk of a stage, under a row
lock on the job, starts the next stage or finishes the job.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from pgvector import HalfVector
from safetensors.numpy import load, save

from catalog_review import dispatch
from catalog_review.models import (
    EMBEDDING_DIM,
    RAW_IMAGE_DIM,
    RAW_TITLE_DIM,
    Flag,
    ImageStatus,
    Job,
    JobChunk,
    ModelVersion,
    Product,
    ProductEmbedding,
    VariationFamily,
    VersionScorer,
)
from catalog_review.services.jobs import job_create, job_mark_running, refresh_planner_statistics
from catalog_review.services.model_versions import active_version, load_model, ml_device
from catalog_review.services.review import confirmed_wrong_variants, wrong_variant_labels
from ml_worker.catalogue import Listing, with_variant_attributes
from ml_worker.evidence import (
    DUPLICATE_CHANNELS,
    WRONG_VARIANT_CHANNELS,
    CatalogueView,
    Scorer,
    describe_duplicate,
    describe_wrong_variant,
)
from ml_worker.features import features_for, own_backbones
from ml_worker.heatmap import render_heatmap
from ml_worker.lexical import TitleIdf, numbers, price_of
from ml_worker.modeling_maps import MapsOutput
from ml_worker.scoring import (
    FamilyPairs,
    catalogue_view,
    encode_inputs,
    fit_catalogue_scorer,
    pair_same_product,
    score_duplicates,
    score_wrong_variants,
)

log = logging.getLogger(__name__)


class ScopeError(ValueError):
    """A score scope that names nothing (unknown family, category or sku)."""


# --- scope -----------------------------------------------------------------------------------------


SCOPE_KEYS = ("family", "category", "skus", "product_ids", "family_ids")  # a part of the catalogue
# (a scope's "reason" says what triggered the job: "import", "review", "admin", "api", "command", ...)


def scope_family_ids(scope: dict) -> list[int]:
    """Families to score. Scopes: {} (everything), {"family": code}, {"category": path},
    {"skus": [...]}, {"product_ids": [...]}, {"family_ids": [...]}; a listing is always scored with
    its whole family."""
    families = VariationFamily.objects.all()
    if "family" in scope:
        families = families.filter(code=scope["family"])
        if not families.exists():
            raise ScopeError(f"no family with code {scope['family']!r}")
    if "category" in scope:
        path = scope["category"]
        products = Product.objects.filter(Q(category__path=path) | Q(category__path__startswith=path + " > "))
        if not products.exists():
            raise ScopeError(f"no listing in category {path!r}")
        families = families.filter(products__in=products)
    if "skus" in scope:
        skus = list(scope["skus"])
        found = set(Product.objects.filter(sku__in=skus).values_list("sku", flat=True))
        missing = [s for s in skus if s not in found]
        if missing:
            raise ScopeError(f"unknown sku(s): {', '.join(missing[:10])}")
        families = families.filter(products__sku__in=skus)
    if "product_ids" in scope:
        families = families.filter(products__id__in=scope["product_ids"])
    if "family_ids" in scope:
        families = families.filter(id__in=scope["family_ids"])
    return list(families.order_by("id").values_list("id", flat=True).distinct())


def _family_chunks(family_ids: list[int], chunk_listings: int) -> list[tuple[list[int], int]]:
    sizes = dict(
        Product.objects.filter(family_id__in=family_ids).values_list("family_id").annotate(n=Count("id"))
    )
    chunks, current, size = [], [], 0
    for fid in family_ids:
        n = sizes.get(fid, 0)
        if current and size + n > chunk_listings:
            chunks.append((current, size))
            current, size = [], 0
        current.append(fid)
        size += n
    if current:
        chunks.append((current, size))
    return chunks


def score_start(*, scope: dict | None = None, requested_by=None, version: ModelVersion | None = None) -> Job:
    """Create a score job and enqueue its embed chunks (after commit)."""
    scope = dict(scope or {})
    version = version or active_version()
    family_ids = scope_family_ids(scope)
    chunks = _family_chunks(family_ids, settings.SCORE_CHUNK_LISTINGS)
    listings = sum(size for _, size in chunks)
    with transaction.atomic():
        job = job_create(
            kind=Job.Kind.SCORE,
            scope=scope
            | {
                "model_version": version.name,
                "model_version_id": version.pk,
                "thresholds": {
                    "wrong_variant": settings.FLAG_WRONG_VARIANT_THRESHOLD,
                    "wrong_variant_max_fraction": settings.FLAG_WRONG_VARIANT_MAX_FRACTION,
                    "duplicate": settings.FLAG_DUPLICATE_THRESHOLD,
                },
            },
            total=2 * listings,  # each listing is embedded, then flagged
            requested_by=requested_by,
        )
        rows = JobChunk.objects.bulk_create(
            JobChunk(job=job, stage=JobChunk.Stage.EMBED, index=i, items=ids, size=size)
            for i, (ids, size) in enumerate(chunks)
        )
        if not rows:
            Job.objects.filter(pk=job.pk).update(
                status=Job.Status.SUCCEEDED, finished_at=timezone.now(), counts={"listings": 0}
            )
        elif any(key in scope for key in SCOPE_KEYS) and (
            reuse := VersionScorer.objects.filter(model_version=version).order_by("-id").first()
        ):
            # a part of the catalogue (a family a reviewer just decided, an import's changed families):
            # the version's latest scorer weighs it, so a re-score takes seconds; the next full score
            # job fits a new one (with the decisions made meanwhile)
            Job.objects.filter(pk=job.pk).update(scope=job.scope | {"scorer_id": reuse.pk})
            ids = [r.pk for r in rows]
            transaction.on_commit(lambda: dispatch.enqueue_chunks(JobChunk.Stage.EMBED, ids))
        else:  # stage 0: fit the version's scorer on the catalogue; its last act enqueues the embed chunks
            fit = JobChunk.objects.create(job=job, stage=JobChunk.Stage.FIT, index=0, items=[], size=0)
            transaction.on_commit(lambda: dispatch.enqueue_chunks(JobChunk.Stage.FIT, [fit.pk]))
    job.refresh_from_db()
    return job


# --- listings as the model sees them ----------------------------------------------------------------


def product_listing(product: Product) -> Listing:
    image = None
    if product.image_status == ImageStatus.OK and product.image:
        image = Path(settings.MEDIA_ROOT) / product.image
    return Listing(
        sku=product.sku,
        title=product.title,
        family=product.family.code,
        category=tuple(product.category_path),
        attributes=product.attributes,
        image=image,
        description=product.description or "",
    )


def product_listings(products) -> list[Listing]:
    """The products as the model reads them, each with its variant attributes (the attributes whose
    values differ within its family: pass whole families)."""
    return with_variant_attributes([product_listing(p) for p in products])


def title_sha256(title: str) -> str:
    return hashlib.sha256(title.encode("utf-8")).hexdigest()


def _claim_chunk(chunk_id: int, stage: str, worker: str = "") -> JobChunk | None:
    """The chunk, if it is of `stage` and still to do (a delivery of another stage's chunk, or of a chunk
    whose job is finished, does nothing). An embed chunk delivered before its job's fit stage is done
    waits for it: the fit stage enqueues every embed chunk when it finishes. The chunk is claimed for
    `worker` (its Celery node name): a delivery of a chunk another worker holds does nothing (the
    reaper, `services.recovery`, re-publishes it if that worker dies); a claim older than CHUNK_LEASE_S
    is anyone's."""
    chunk = JobChunk.objects.select_related("job").filter(pk=chunk_id, stage=stage).first()
    if chunk is None or chunk.done_at is not None or chunk.job.is_finished:
        return None
    if stage == JobChunk.Stage.EMBED and "scorer_id" not in chunk.job.scope:
        return None
    now = timezone.now()
    expired = now - timedelta(seconds=settings.CHUNK_LEASE_S)
    taken = (
        JobChunk.objects.filter(pk=chunk.pk, done_at__isnull=True)
        .filter(Q(claimed_by="") | Q(claimed_by=worker) | Q(claimed_at__lt=expired))
        .update(claimed_by=worker, claimed_at=now)
    )
    if not taken:
        return None
    job_mark_running(job_id=chunk.job_id)
    return chunk


def _claim_work(chunk_id: int, stage: str, worker: str):
    """(chunk, its job, the job's model version, that version's model, the device to run it on): the
    chunk claimed (`_claim_chunk`); None when there is nothing to do."""
    chunk = _claim_chunk(chunk_id, stage, worker)
    if chunk is None:
        return None
    version = ModelVersion.objects.get(pk=chunk.job.scope["model_version_id"])
    return chunk, chunk.job, version, load_model(version), ml_device()


def _finish_chunk(chunk: JobChunk) -> bool:
    """Inside the result transaction: mark the chunk done (False when another delivery already did)
    and count its listings."""
    if not JobChunk.objects.filter(pk=chunk.pk, done_at__isnull=True).update(done_at=timezone.now()):
        return False
    Job.objects.filter(pk=chunk.job_id).update(done=F("done") + chunk.size, heartbeat_at=timezone.now())
    return True


# --- stage 1: embed ---------------------------------------------------------------------------------


def embed_chunk_run(chunk_id: int, worker: str = "") -> str:
    claimed = _claim_work(chunk_id, JobChunk.Stage.EMBED, worker)
    if claimed is None:
        return "nothing to do"
    chunk, job, version, model, device = claimed
    products = list(
        Product.objects.filter(family_id__in=chunk.items).select_related("family", "category").order_by("id")
    )
    rows = []
    if products:
        listings = product_listings(products)
        # unchanged listings' backbone features come from the last training's cache
        features = features_for(model.final, listings, device=device, cache_dir=settings.FEATURE_CACHE_DIR)
        inputs = features.inputs(torch.arange(len(products))).to(device)
        out = encode_inputs(model.final.to(device), inputs)
        wrong_variant = _wrong_variant_scores(
            model, job_scorer(job), products, listings, features, out, device
        )
        now = timezone.now()
        for i, p in enumerate(products):
            rows.append(
                ProductEmbedding(
                    product=p,
                    model_version=version,
                    vector=out.embedding[i].numpy(),
                    image_vector=out.image_embedding[i].numpy() if features.has_image[i] else None,
                    title_vector=out.title_embedding[i].numpy(),
                    raw_image=HalfVector(out.raw_image[i].numpy()),
                    raw_title=out.raw_title[i].numpy(),
                    attention=[[round(v, 5) for v in row] for row in out.spatial_attention[i].tolist()],
                    title_sha256=title_sha256(p.title),
                    image_sha256=p.image_sha256,
                    wrong_variant_score=wrong_variant[p.pk][0] if p.pk in wrong_variant else None,
                    duplicate_score=None,
                    duplicate_of=None,
                    evidence=wrong_variant[p.pk][1] if p.pk in wrong_variant else {},
                    scored_at=now,
                )
            )
    with transaction.atomic():
        if not _finish_chunk(chunk):
            return "already done"
        ProductEmbedding.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["product", "model_version"],
            update_fields=[
                "vector",
                "image_vector",
                "title_vector",
                "raw_image",
                "raw_title",
                "attention",
                "title_sha256",
                "image_sha256",
                "wrong_variant_score",
                "duplicate_score",
                "duplicate_of",
                "evidence",
                "scored_at",
            ],
        )
        _maybe_next_stage(chunk.job_id, JobChunk.Stage.EMBED)
    return f"embedded {len(rows)}"


def _wrong_variant_scores(
    model, scorer: Scorer, products: list[Product], listings: list[Listing], features, out: MapsOutput, device
) -> dict[int, tuple[float, dict]]:
    """P(wrong) and the evidence of each listing of the chunk's multi-member families, by product id
    (`ml_worker.scoring.score_wrong_variants`, as `ml_worker.evaluate` scores): the pair head of the fold
    model that never saw the family, image and text agreement with the siblings, and the listing's own
    image against its own attributes, category and text, weighed by the job's fitted scorer. A member a
    reviewer confirmed as a wrong variant is left out of its siblings' comparisons (shown, marked
    `excluded`). A listing left with no sibling to compare with gets no score."""
    confirmed_out = confirmed_wrong_variants([p.pk for p in products])

    features_of = _member_features(features, listings, device)
    families = [x.family for x in listings]
    pairs = FamilyPairs(
        model, features, families, device=device, outputs={id(model.final): out}, features_of=features_of
    )
    view = catalogue_view(listings, out)
    groups = [m for m in view.members.values() if len(m) > 1]
    excluded = {i for i, p in enumerate(products) if p.pk in confirmed_out}
    result = score_wrong_variants(view, scorer, pairs, groups, excluded)
    return {
        products[i].pk: (r["score"], _wrong_variant_evidence(view, scorer, products, i, r))
        for i, r in result.items()
    }


def _wrong_variant_evidence(
    view: CatalogueView, scorer: Scorer, products: list[Product], i: int, r: dict
) -> dict:
    """What a wrong-variant flag on listing `i` shows, built once, when the listing is scored: it is
    stored with the embedding, and the flag stage adds only the heatmaps of the family members beside
    the listings it flags."""
    agreement = []
    for j, v, counted in zip(r["siblings"], r["agreement"], r["counted"], strict=True):
        entry = {
            "sku": products[j].sku,
            "p_same_family": round(v, 4),
            "image_similarity": round(float(view.image[i] @ view.image[j]), 4)
            if view.has_image[i] and view.has_image[j]
            else None,
        }
        if not counted:
            entry["excluded"] = True
        agreement.append(entry)
    channels = r["channels"]
    counted_siblings = [j for j, c in zip(r["siblings"], r["counted"], strict=True) if c]
    return {
        "wrong_variant_score": round(r["score"], 4),
        "agrees_with": sum(1 for a in agreement if not a.get("excluded") and a["p_same_family"] >= 0.5),
        "family_size": len(counted_siblings) + 1,
        "family_agreement": agreement,
        "channels": {n: round(float(v), 4) for n, v in zip(WRONG_VARIANT_CHANNELS, channels, strict=True)},
        "kinds": {
            k: round(float(p), 4) for k, p in scorer.wrong_variant.kind_probabilities(channels).items()
        },
        "lines": describe_wrong_variant(
            channels,
            scorer.wrong_variant,
            r["own"],
            len(counted_siblings),
            _category_names(view, i, counted_siblings),
        ),
        **({"looks_like": r["own"]} if r["own"] else {}),
    }


def _member_features(features, listings: list[Listing], device: str):
    """What a version's member reads: the packaged backbones' `features`, or (trained end to end) the
    listings through its own backbones."""

    def features_of(member):
        if own_backbones(member) is None:
            return features
        return features_for(member, listings, device=device)

    return features_of


def _category_names(view: CatalogueView, i: int, siblings: list[int]) -> tuple[str, str] | None:
    """The listing's category leaf and its siblings' most common one."""
    if not siblings or not view.categories[i]:
        return None
    theirs = Counter(view.categories[j][-1] for j in siblings if view.categories[j]).most_common(1)
    return (view.categories[i][-1], theirs[0][0]) if theirs else None


# --- stage 0: fit the version's scorer on the catalogue -------------------------------------------


def _fit_sample(cap: int) -> list[Product]:
    """The listings a scorer is fitted on: the whole catalogue up to `cap` listings, else whole families
    in a stable hash order (reviewer-decided ones first) until the cap; in import order."""
    sizes = list(VariationFamily.objects.annotate(n=Count("products")).values_list("id", "code", "n"))
    if sum(n for _, _, n in sizes) > cap:
        decided = set(
            Product.objects.filter(pk__in=list(wrong_variant_labels())).values_list("family_id", flat=True)
        )
        sizes.sort(key=lambda t: (t[0] not in decided, hashlib.sha256(t[1].encode()).hexdigest()))
        chosen, total = [], 0
        for fid, _code, n in sizes:
            if total + n > cap and chosen:
                continue
            chosen.append(fid)
            total += n
        products = Product.objects.filter(family_id__in=chosen)
    else:
        products = Product.objects.all()
    return list(products.select_related("family", "category").order_by("id"))


def fit_chunk_run(chunk_id: int, worker: str = "") -> str:
    """Stage 0 of a score job (gpu queue): fit the scorer (own-evidence heads, the combiners on errors
    planted into the catalogue, reviewer decisions in force at a higher weight) and store it with the
    version; then start the embed chunks."""
    claimed = _claim_work(chunk_id, JobChunk.Stage.FIT, worker)
    if claimed is None:
        return "nothing to do"
    chunk, job, version, model, device = claimed
    products = _fit_sample(settings.SCORER_FIT_LISTINGS)
    listings = product_listings(products)
    features = features_for(model.final, listings, device=device, cache_dir=settings.FEATURE_CACHE_DIR)
    row_of = {p.pk: i for i, p in enumerate(products)}
    reviewed = [
        (row_of[pid], confirmed) for pid, confirmed in wrong_variant_labels().items() if pid in row_of
    ]

    features_of = _member_features(features, listings, device)
    pairs = FamilyPairs(model, features, [x.family for x in listings], device=device, features_of=features_of)
    scorer, *_ = fit_catalogue_scorer(
        model, features, listings, device=device, pairs=pairs, reviewed=reviewed
    )
    arrays, meta = scorer.to_payload()
    with transaction.atomic():
        if not _finish_chunk(chunk):
            return "already done"
        saved = VersionScorer.objects.create(
            model_version=version, job=job, arrays=save_arrays(arrays), meta=meta, listings=len(listings)
        )
        locked = Job.objects.select_for_update().get(pk=job.pk)
        locked.scope["scorer_id"] = saved.pk
        locked.save(update_fields=["scope"])
        _maybe_next_stage(job.pk, JobChunk.Stage.FIT)
    return f"fitted a scorer on {len(listings)} listings"


def save_arrays(arrays: dict) -> bytes:
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


_SCORER_CACHE: dict[int, Scorer] = {}


def job_scorer(job: Job) -> Scorer:
    """The scorer the job's fit stage stored (cached per worker process)."""
    scorer_id = job.scope["scorer_id"]
    if scorer_id not in _SCORER_CACHE:
        _SCORER_CACHE.clear()
        saved = VersionScorer.objects.get(pk=scorer_id)
        _SCORER_CACHE[scorer_id] = Scorer.from_payload(load(bytes(saved.arrays)), saved.meta)
    return _SCORER_CACHE[scorer_id]


def _maybe_next_stage(job_id: int, stage: str) -> None:
    """Called in a chunk's result transaction: the last chunk of a stage starts the next one."""
    job = Job.objects.select_for_update().get(pk=job_id)
    if job.is_finished or JobChunk.objects.filter(job=job, stage=stage, done_at__isnull=True).exists():
        return  # cancelled meanwhile, or other chunks still to come
    if stage == JobChunk.Stage.FIT:
        ids = list(
            JobChunk.objects.filter(job=job, stage=JobChunk.Stage.EMBED, done_at__isnull=True).values_list(
                "pk", flat=True
            )
        )
        transaction.on_commit(lambda: dispatch.enqueue_chunks(JobChunk.Stage.EMBED, ids))
    elif stage == JobChunk.Stage.EMBED:
        if JobChunk.objects.filter(job=job, stage=JobChunk.Stage.FLAG).exists():
            return
        _cap_wrong_variant_threshold(job)
        embed_chunks = JobChunk.objects.filter(job=job, stage=JobChunk.Stage.EMBED).order_by("index")
        flag_chunks = JobChunk.objects.bulk_create(
            JobChunk(job=job, stage=JobChunk.Stage.FLAG, index=c.index, items=c.items, size=c.size)
            for c in embed_chunks
        )
        ids = [c.pk for c in flag_chunks]
        transaction.on_commit(lambda: dispatch.enqueue_chunks(JobChunk.Stage.FLAG, ids))
    else:
        _finish_score_job(job)


def _cap_wrong_variant_threshold(job: Job) -> None:
    """Raise the job's wrong_variant threshold to the score above which lies at most the recorded
    fraction of the version's scored listings (the whole catalogue, not only the job's scope): a model
    whose calibration does not fit a catalogue (say, the zero-shot version on a new domain) then
    flags its most suspicious listings instead of most of them. The configured threshold and the
    cap's value are kept in the job's scope."""
    thresholds = job.scope["thresholds"]
    fraction = thresholds.get("wrong_variant_max_fraction")
    if fraction is None or fraction >= 1:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT percentile_disc(%s) WITHIN GROUP (ORDER BY wrong_variant_score), count(*) "
            "FROM catalog_review_productembedding "
            "WHERE model_version_id = %s AND wrong_variant_score IS NOT NULL",
            [1 - fraction, job.scope["model_version_id"]],
        )
        quantile, scored = cursor.fetchone()
    thresholds["wrong_variant_configured"] = thresholds["wrong_variant"]
    thresholds["wrong_variant_cap"] = quantile
    if quantile is not None and quantile > thresholds["wrong_variant"]:
        thresholds["wrong_variant"] = float(quantile)
    thresholds["wrong_variant_scored"] = scored
    job.save(update_fields=["scope"])


# --- stage 2: duplicates and flags ----------------------------------------------------------------

_KNN_SQL = """
SELECT q.product_id, c.product_id
FROM catalog_review_productembedding q
CROSS JOIN LATERAL (
    SELECT e.product_id FROM catalog_review_productembedding e
    WHERE e.model_version_id = q.model_version_id AND e.product_id <> q.product_id
    ORDER BY e.{column} <=> q.{column}
    LIMIT %s
) c
WHERE q.model_version_id = %s AND q.product_id = ANY(%s)
"""


def knn_candidates(version_id: int, product_ids: list[int], k: int) -> dict[int, set[int]]:
    """Nearest listings of each product by the fused vector, and by the image and the title vectors (so a
    re-photographed or a re-titled listing is still found; pgvector HNSW)."""
    candidates = defaultdict(set)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(settings.HNSW_EF_SEARCH, k)])
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        for column, limit in (
            ("vector", k),
            ("image_vector", max(1, k // 2)),
            ("title_vector", max(1, k // 2)),
        ):
            cursor.execute(_KNN_SQL.format(column=column), [limit, version_id, product_ids])
            for q, c in cursor.fetchall():
                candidates[q].add(c)
    return candidates


def _outputs(embeddings: list[ProductEmbedding]) -> MapsOutput:
    def stack(values, dim: int):
        """Vectors as one float32 tensor; a missing vector (no image) is zeros."""
        out = np.zeros((len(values), dim), dtype=np.float32)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = v
        return torch.as_tensor(out)

    n = len(embeddings)
    return MapsOutput(
        embedding=stack([e.vector for e in embeddings], EMBEDDING_DIM),
        image_embedding=stack([e.image_vector for e in embeddings], EMBEDDING_DIM),
        title_embedding=stack([e.title_vector for e in embeddings], EMBEDDING_DIM),
        spatial_attention=torch.zeros(n, 1, 1),
        channel_attention=torch.zeros(n, 1),
        crop_box=torch.zeros(n, 4),
        raw_image=stack([e.raw_image for e in embeddings], RAW_IMAGE_DIM),
        raw_title=stack([e.raw_title for e in embeddings], RAW_TITLE_DIM),
    )


_IDF_CACHE: dict[int, TitleIdf] = {}


def _catalogue_idf(job_id: int) -> TitleIdf:
    """Word IDF over every listing title, computed once per score job in a worker process (the
    job's chunks share it; a new job sees the catalogue as it is then)."""
    if job_id not in _IDF_CACHE:
        _IDF_CACHE.clear()
        titles = Product.objects.values_list("title", flat=True).iterator(chunk_size=5000)
        _IDF_CACHE[job_id] = TitleIdf(titles)
    return _IDF_CACHE[job_id]


def _title_evidence(job_id: int, a: Product, b: Product, both_images: bool) -> dict:
    """What a reviewer is shown of an image-less duplicate pair's words: their TF-IDF similarity, and
    the numbers and prices that disagree (what `ml_worker.lexical.disagreement` counted against it)."""
    if both_images:
        return {}
    out = {
        "word_similarity": round(
            float(_catalogue_idf(job_id).pair_similarity([a.title, b.title], [0], [1])), 4
        )
    }
    na, nb = numbers(a.title), numbers(b.title)
    if na and nb and not na & nb:
        out["numbers_differ"] = [sorted(na), sorted(nb)]
    pa, pb = price_of(a.attributes), price_of(b.attributes)
    if pa is not None and pb is not None:
        out["prices"] = [pa, pb]
    return out


@dataclass
class FlagCandidate:
    """A flag a chunk will raise (or update, or suppress: `record_flag` decides), with its evidence and
    the media paths of its heatmaps, rendered before the result transaction opens."""

    kind: str
    product: Product
    counterpart: Product | None
    score: float
    evidence: dict
    heatmap: str


def flag_chunk_run(chunk_id: int, worker: str = "") -> str:
    """Stage 2 (flag) for one chunk of families: each listing's duplicate candidates by kNN, the best match
    scored, the flags to raise with their evidence and heatmaps; then, in one transaction, the chunk
    marked done with its results (duplicate matches stored, flags recorded, the job's counts)."""
    claimed = _claim_work(chunk_id, JobChunk.Stage.FLAG, worker)
    if claimed is None:
        return "nothing to do"
    chunk, job, version, full_model, _device = claimed
    mine, pool, candidates = _candidate_pool(version, chunk.items)
    best = _best_duplicates(job, full_model, pool, candidates)
    flags = [
        *_wrong_variant_flags(job, version, mine),
        *_duplicate_flags(job, version, full_model, mine, pool, best),
    ]
    with transaction.atomic():
        if not _finish_chunk(chunk):
            return "already done"
        now = timezone.now()
        for pid, e in mine.items():
            match = best.get(pid)
            e.duplicate_of_id, e.duplicate_score = (match[0], match[1]) if match else (None, None)
            e.scored_at = now
        ProductEmbedding.objects.bulk_update(
            list(mine.values()), ["duplicate_of", "duplicate_score", "scored_at"]
        )
        counts = defaultdict(int)
        for flag in flags:
            outcome = record_flag(
                kind=flag.kind,
                product=flag.product,
                counterpart=flag.counterpart,
                score=flag.score,
                version=version,
                job=job,
                evidence=flag.evidence,
                heatmap=flag.heatmap,
            )
            counts[f"{flag.kind}_{outcome}"] += 1
        if counts:
            _add_counts(job.pk, counts)
        _maybe_next_stage(job.pk, JobChunk.Stage.FLAG)
    return f"flagged {dict(counts)}"


def _candidate_pool(version: ModelVersion, family_ids: list[int]):
    """The chunk's listings (`mine`), each one's duplicate candidates by kNN over the version's vectors,
    and the embeddings of every listing involved (`pool`: mine and their candidates from elsewhere)."""
    related = ("product", "product__family", "product__category")
    mine = {
        e.product_id: e
        for e in ProductEmbedding.objects.filter(
            model_version=version, product__family_id__in=family_ids
        ).select_related(*related)
    }
    with transaction.atomic():  # SET LOCAL needs a transaction
        candidates = knn_candidates(version.pk, list(mine), settings.DUPLICATE_NEIGHBOURS)
    others = {c for cs in candidates.values() for c in cs} - set(mine)
    pool = dict(mine)
    pool.update(
        (e.product_id, e)
        for e in ProductEmbedding.objects.filter(model_version=version, product_id__in=others).select_related(
            *related
        )
    )
    return mine, pool, candidates


def _best_duplicates(job: Job, full_model, pool: dict, candidates: dict) -> dict:
    """Each listing's best duplicate candidate: {product id: (other id, score, channel values)}."""
    ids = list(pool)
    position = {pid: i for i, pid in enumerate(ids)}
    pairs_i, pairs_j = [], []
    for pid, cs in candidates.items():
        for c in sorted(cs):
            pairs_i.append(position[pid])
            pairs_j.append(position[c])
    if not pairs_i:
        return {}
    out = _outputs([pool[pid] for pid in ids])
    products = [pool[pid].product for pid in ids]
    view = CatalogueView(
        skus=[p.sku for p in products],
        families=[p.family.code for p in products],
        categories=[tuple(p.category_path) for p in products],
        attributes=[p.attributes for p in products],
        titles=[p.title for p in products],
        descriptions=[p.description or "" for p in products],
        image=out.raw_image.double().numpy(),
        text=out.raw_title.double().numpy(),
    )
    idf = _catalogue_idf(job.pk)
    prices = [price_of(p.attributes) for p in products]
    p_same = pair_same_product(full_model.final.cpu(), out, pairs_i, pairs_j, view.titles, prices, idf)
    matches = score_duplicates(view, job_scorer(job), pairs_i, pairs_j, p_same, idf)
    return {ids[a]: (ids[b], v, channels) for a, (b, v, channels) in matches.items()}


def _wrong_variant_flags(job: Job, version: ModelVersion, mine: dict) -> list[FlagCandidate]:
    """The chunk's listings whose wrong-variant score reaches the job's threshold, each with how its
    family agreed and the heatmaps of the family members beside it."""
    threshold = job.scope["thresholds"]["wrong_variant"]
    flags = []
    for pid, e in mine.items():
        if e.wrong_variant_score is None or e.wrong_variant_score < threshold:
            continue
        product = e.product
        evidence = {
            **e.evidence,
            "member_heatmaps": {
                m.product.sku: path
                for m in mine.values()
                if m.product.family_id == product.family_id
                and m.product_id != pid
                and (path := _heatmap(m.product, m, version))
            },
        }
        flags.append(
            FlagCandidate(
                kind=Flag.Kind.WRONG_VARIANT,
                product=product,
                counterpart=None,
                score=e.wrong_variant_score,
                evidence=evidence,
                heatmap=_heatmap(product, e, version),
            )
        )
    return flags


def _duplicate_flags(
    job: Job, version, full_model, mine: dict, pool: dict, best: dict
) -> list[FlagCandidate]:
    """The chunk's listings whose best match reaches the duplicate threshold: the pair (lower id first)
    with the channels that scored it and what a reviewer is shown of them."""
    threshold = job.scope["thresholds"]["duplicate"]
    flags = []
    for pid, e in mine.items():
        match = best.get(pid)
        if not match or match[1] < threshold:
            continue
        other_id, score, channels = match
        a, b = (e, pool[other_id]) if pid < other_id else (pool[other_id], e)
        both_images = a.image_vector is not None and b.image_vector is not None
        evidence = {
            "duplicate_score": round(score, 4),
            "found_from": e.product.sku,
            "channels": {n: round(float(v), 4) for n, v in zip(DUPLICATE_CHANNELS, channels, strict=True)},
            "lines": describe_duplicate(channels, job_scorer(job).duplicate),
            "same_family": a.product.family_id == b.product.family_id,
            "image_cosine": round(
                float(
                    np.dot(
                        np.asarray(a.raw_image, dtype=np.float32), np.asarray(b.raw_image, dtype=np.float32)
                    )
                ),
                4,
            ),
            "title_cosine": round(float(np.dot(a.raw_title, b.raw_title)), 4),
            "counterpart_heatmap": _heatmap(b.product, b, version),
            **_title_evidence(job.pk, a.product, b.product, both_images),
        }
        flags.append(
            FlagCandidate(
                kind=Flag.Kind.DUPLICATE,
                product=a.product,
                counterpart=b.product,
                score=score,
                evidence=evidence,
                heatmap=_heatmap(a.product, a, version),
            )
        )
    return flags


def _add_counts(job_id: int, counts: dict) -> None:
    job = Job.objects.select_for_update().get(pk=job_id)
    merged = dict(job.counts)
    for k, v in counts.items():
        merged[k] = merged.get(k, 0) + v
    Job.objects.filter(pk=job_id).update(counts=merged)


def flag_fingerprint(product: Product, counterpart: Product | None) -> str:
    parts = [product.title, product.image_sha256]
    if counterpart is not None:
        parts += [counterpart.title, counterpart.image_sha256]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def record_flag(*, kind, product, counterpart, score, version, job, evidence, heatmap: str = "") -> str:
    """Raise, update or suppress one flag. Returns "created", "updated" or "suppressed".

    A flag a reviewer already decided for the same pair is never raised again unless one of the
    listings changed (title or image); an open flag is updated in place."""
    fingerprint = flag_fingerprint(product, counterpart)
    same_pair = Flag.objects.filter(kind=kind, product=product, counterpart=counterpart)
    if same_pair.filter(
        status__in=[Flag.Status.CONFIRMED, Flag.Status.REJECTED], fingerprint=fingerprint
    ).exists():
        return "suppressed"
    fields = {
        "score": score,
        "model_version": version,
        "evidence": evidence,
        "heatmap": heatmap,
        "fingerprint": fingerprint,
        "last_job": job,
    }
    existing = same_pair.select_for_update().filter(status=Flag.Status.OPEN).first()
    if existing is None:
        try:
            with transaction.atomic():
                Flag.objects.create(kind=kind, product=product, counterpart=counterpart, **fields)
            return "created"
        except IntegrityError:  # raised at the same moment by another chunk
            existing = same_pair.select_for_update().get(status=Flag.Status.OPEN)
    if existing.last_job_id == job.pk and existing.score > score:
        return "updated"  # both directions of a duplicate pair: keep the higher score
    for name, value in fields.items():
        setattr(existing, name, value)
    existing.save(update_fields=[*fields, "updated_at"])
    return "updated"


def _finish_score_job(job: Job) -> None:
    """Open flags of the scope that this job did not assert no longer hold: stale."""
    family_ids = [fid for c in job.chunks.filter(stage=JobChunk.Stage.FLAG) for fid in c.items]
    open_flags = Flag.objects.filter(status=Flag.Status.OPEN).exclude(last_job=job)
    stale = open_flags.filter(kind=Flag.Kind.WRONG_VARIANT, product__family_id__in=family_ids).update(
        status=Flag.Status.STALE
    )
    stale += open_flags.filter(
        kind=Flag.Kind.DUPLICATE,
        product__family_id__in=family_ids,
        counterpart__family_id__in=family_ids,
    ).update(status=Flag.Status.STALE)
    counts = dict(job.counts)
    counts["stale"] = stale
    counts["listings"] = job.total // 2
    counts["open_flags"] = Flag.objects.filter(status=Flag.Status.OPEN, last_job=job).count()
    Job.objects.filter(pk=job.pk, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
        status=Job.Status.SUCCEEDED, finished_at=timezone.now(), counts=counts, done=job.total
    )
    refresh_planner_statistics(Flag, ProductEmbedding)


def _heatmap(product: Product, embedding: ProductEmbedding, version: ModelVersion) -> str:
    """Media path of the listing's title-guided attention heatmap (rendered once per image+version)."""
    if product.image_status != ImageStatus.OK or not product.image or not embedding.attention:
        return ""
    key = f"{product.image_sha256[:16]}-{title_sha256(product.title)[:8]}"
    relative = f"heatmaps/v{version.pk}/{product.pk}-{key}.png"
    target = Path(settings.MEDIA_ROOT) / relative
    if not target.exists():
        try:
            png = render_heatmap(Path(settings.MEDIA_ROOT) / product.image, np.asarray(embedding.attention))
        except OSError as exc:
            log.warning("heatmap of %s not rendered: %s", product.sku, exc)
            return ""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(png)
        tmp.replace(target)
    return relative
