"""The data model (DESIGN section 5).

Catalogue: Category (tree) > VariationFamily > Product. Model: ModelVersion, ProductEmbedding
(pgvector, HNSW cosine index). Work: Job. Review: Flag, ReviewDecision (append-only audit),
LabelledPair (append-only; a retraction is a new row).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Abs, Upper
from django.utils import timezone
from pgvector.django import HalfVectorField, HnswIndex, VectorField

EMBEDDING_DIM = 256
RAW_IMAGE_DIM = 2560  # mean+max pooled EfficientNet-Lite0 head map
RAW_TITLE_DIM = 384  # mean-pooled MiniLM token states


class Category(models.Model):
    """A node of the category tree; `path` is the full ' > '-joined path, unique."""

    name = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    path = models.CharField(max_length=1000, unique=True)
    depth = models.PositiveSmallIntegerField()

    class Meta:
        verbose_name_plural = "categories"
        ordering = ["path"]

    def __str__(self) -> str:
        return self.path

    def tree_ids(self) -> list[int]:
        """This category's id and its descendants' (the tree is small: one query, no join per row)."""
        tree = Category.objects.filter(Q(pk=self.pk) | Q(path__startswith=self.path + " > "))
        return list(tree.values_list("pk", flat=True))


class VariationFamily(models.Model):
    """A variation family: listings that are variants of one product (colours, sizes, styles)."""

    code = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "variation families"
        ordering = ["code"]
        indexes = [models.Index(Upper("code"), name="family_code_upper")]  # search: code__iexact

    def __str__(self) -> str:
        return self.code


class ImageStatus(models.TextChoices):
    OK = "ok", "ok"
    NONE = "none", "no image (title only)"
    PENDING = "pending", "waiting for download"
    MISSING = "missing", "file not found"
    INVALID = "invalid", "not a usable image"
    TOO_LARGE = "too_large", "too large"
    FETCH_FAILED = "fetch_failed", "download failed"


class ProductQuerySet(models.QuerySet):
    def search(self, text: str) -> ProductQuerySet:
        """Case-insensitive substring search over sku, title and family code (trigram-indexed)."""
        text = text.strip()
        if not text:
            return self
        # the family looked up first: an OR across a join reads every listing; on the listing's own columns
        # each term has its index (upper(sku), trigram upper(title), family_id) and PostgreSQL ORs them
        families = list(VariationFamily.objects.filter(code__iexact=text).values_list("pk", flat=True)[:1])
        return self.filter(Q(sku__iexact=text) | Q(title__icontains=text) | Q(family_id__in=families))

    def in_category(self, category: Category) -> ProductQuerySet:
        """Products in the category or any of its descendants (the category ids looked up first: the tree is
        small, the listings many)."""
        return self.filter(category_id__in=category.tree_ids())


class Product(models.Model):
    sku = models.CharField(max_length=200, unique=True)
    title = models.CharField(max_length=1000)
    description = models.TextField(blank=True, default="")
    attributes = models.JSONField(default=dict, blank=True)
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.PROTECT, related_name="products"
    )
    family = models.ForeignKey(VariationFamily, on_delete=models.PROTECT, related_name="products")
    image = models.CharField(
        max_length=300, blank=True, default="", help_text="content-addressed path under MEDIA_ROOT"
    )
    image_sha256 = models.CharField(max_length=64, blank=True, default="", db_index=True)
    image_source = models.CharField(
        max_length=2000, blank=True, default="", help_text="the image reference as given in the catalogue"
    )
    image_status = models.CharField(max_length=20, choices=ImageStatus.choices, default=ImageStatus.NONE)
    image_error = models.CharField(max_length=500, blank=True, default="")
    image_width = models.PositiveIntegerField(null=True, blank=True)
    image_height = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProductQuerySet.as_manager()

    class Meta:
        ordering = ["sku"]
        indexes = [
            GinIndex(OpClass(Upper("title"), name="gin_trgm_ops"), name="product_title_trgm"),
            models.Index(Upper("sku"), name="product_sku_upper"),  # search: sku__iexact
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.title}"

    @property
    def category_path(self) -> list[str]:
        return self.category.path.split(" > ") if self.category_id else []


class ModelVersion(models.Model):
    """A trained (or zero-shot) model: checkpoint (safetensors) + config + validation metrics."""

    name = models.CharField(max_length=100, unique=True)
    checkpoint_path = models.CharField(max_length=500, blank=True, default="")
    checkpoint_sha256 = models.CharField(max_length=64, blank=True, default="")
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, blank=True)
    training_data = models.JSONField(
        default=dict, blank=True, help_text="what it was trained on: counts by source"
    )
    is_active = models.BooleanField(default=False)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_model_version"
            )
        ]

    def __str__(self) -> str:
        return self.name


class VersionScorer(models.Model):
    """What a score job fitted for its model version on the catalogue before scoring it
    (`ml_worker.evidence.Scorer`): the own-evidence heads (arrays, safetensors) and the wrong-variant and
    duplicate combiners with their fit on planted errors (meta, JSON). The newest is the version's."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="scorers")
    job = models.ForeignKey("Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    arrays = models.BinaryField()
    meta = models.JSONField(default=dict)
    listings = models.PositiveIntegerField(default=0, help_text="listings it was fitted on")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"scorer {self.pk} of {self.model_version_id}"


class ProductEmbedding(models.Model):
    """What one model version computed for one listing: its vectors (pgvector; HNSW cosine indexes on
    the fused, image and title embeddings), the backbone descriptors the pair head needs, the title-
    guided attention map, and the listing's scores (written by the flagging stage)."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="embeddings")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="embeddings")
    vector = VectorField(dimensions=EMBEDDING_DIM)
    image_vector = VectorField(dimensions=EMBEDDING_DIM, null=True)
    title_vector = VectorField(dimensions=EMBEDDING_DIM, null=True)
    raw_image = HalfVectorField(dimensions=RAW_IMAGE_DIM, null=True)
    raw_title = VectorField(dimensions=RAW_TITLE_DIM, null=True)
    attention = models.JSONField(default=list, blank=True, help_text="spatial attention map, rows x cols")
    # what the vector was computed from: a changed title or image makes it stale
    title_sha256 = models.CharField(max_length=64, blank=True, default="")
    image_sha256 = models.CharField(max_length=64, blank=True, default="")
    # scores (DESIGN 4): the wrong-variant score from the embed stage, the duplicate score from the flag
    # stage; null where a score does not apply
    wrong_variant_score = models.FloatField(null=True, blank=True)
    duplicate_score = models.FloatField(null=True, blank=True)
    duplicate_of = models.ForeignKey(
        Product, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # a wrong-variant score's evidence, as its flag shows it (the flag stage adds the members' heatmaps)
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    scored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["product", "model_version"], name="one_embedding_per_product_version"
            )
        ]
        indexes = [
            HnswIndex(
                name="embedding_vector_hnsw_cosine",
                fields=["vector"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
            HnswIndex(
                name="embedding_image_hnsw_cosine",
                fields=["image_vector"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
            HnswIndex(
                name="embedding_title_hnsw_cosine",
                fields=["title_vector"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"embedding of {self.product_id} by {self.model_version_id}"


class Job(models.Model):
    """A unit of background work. Progress lives here, not in Celery's result store."""

    class Kind(models.TextChoices):
        IMPORT = "import", "import catalogue"
        FETCH_IMAGES = "fetch_images", "download images"
        SCORE = "score", "score"
        TRAIN = "train", "train"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=20, choices=Kind.choices)
    scope = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)  # what the job found or made (its result)
    phase = models.CharField(max_length=40, blank=True, default="")  # what a running job is doing now
    error = models.TextField(blank=True, default="")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(
        max_length=200, blank=True, default="", help_text="the worker running a single-task job (train)"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "kind"], name="job_status_kind")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def progress(self) -> float:
        """Fraction of work items finished (succeeded or failed), 0..1."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        if not self.total:
            return 0.0
        return min(1.0, (self.done + self.failed) / self.total)

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    TRIGGERS = {
        "review": "reviewer confirmation",
        "import": "import",
        "admin": "admin",
        "api": "API",
        "command": "command line",
        "training": "training (re-score with the new version)",
        "activation": "version activated",
    }

    @property
    def trigger(self) -> str:
        """What started the job, in words (job pages)."""
        reason = (self.scope or {}).get("reason", "")
        label = self.TRIGGERS.get(reason) or ("admin" if self.requested_by_id else "command line")
        if self.requested_by_id and reason in ("admin", "api", "training", "activation", ""):
            return f"{label} ({self.requested_by.get_username()})"
        return label

    def timing(self, now=None) -> dict:
        """Elapsed time and, for a running job past 2% of its work, an estimate of the time left, as
        words ("4 min 10 s")."""
        now = now or timezone.now()
        if self.started_at is None:
            return {}
        end = self.finished_at if self.is_finished and self.finished_at else now
        elapsed = (end - self.started_at).total_seconds()
        out = {"elapsed": _duration(elapsed)}
        done = self.progress
        if not self.is_finished and 0.02 <= done < 1:
            out["left"] = _duration(elapsed * (1 - done) / done)
        return out

    @property
    def facts(self) -> list[tuple[str, str]]:
        """The job's counts as labelled numbers in plain words (job pages)."""
        return [(_fact_label(key), _fact_value(value)) for key, value in (self.counts or {}).items()]

    @property
    def scope_label(self) -> str:
        """What the job covers, in words (job tables)."""
        scope = self.scope or {}
        if self.kind == self.Kind.SCORE:
            what = (
                f"family {scope['family']}"
                if "family" in scope
                else f"category {scope['category']}"
                if "category" in scope
                else f"{len(scope['skus'])} skus"
                if "skus" in scope
                else "the family of a confirmed wrong variant"
                if scope.get("reason") == "review"
                else f"{len(scope['family_ids'])} changed families"
                if "family_ids" in scope
                else "whole catalogue"
            )
            return f"{what} · {scope.get('model_version', '')}"
        if self.kind == self.Kind.TRAIN:
            backbones = {True: ", end to end", False: ", frozen"}.get(scope.get("end_to_end"), "")
            steps = f"{scope['steps']} steps" if scope.get("steps") else "default steps"
            start = (
                f", from {scope['warm_start_from']}"
                if scope.get("warm_start_from")
                else {True: ", warm start", False: ", from scratch"}.get(scope.get("warm_start"), "")
            )
            return steps + backbones + start + (", activate" if scope.get("activate") else "")
        return str(scope.get("file", ""))


FACT_LABELS = {
    "listings": "listings",
    "open_flags": "open flags",
    "stale": "flags that no longer hold (stale)",
    "duplicate_created": "duplicate flags raised",
    "duplicate_updated": "duplicate flags updated",
    "wrong_variant_created": "wrong-variant flags raised",
    "wrong_variant_updated": "wrong-variant flags updated",
    "end_to_end": "backbones fine-tuned end to end",
    "version": "model version",
    "activated": "activated",
    "rescore_job": "re-score job",
}


def _fact_label(key: str) -> str:
    return FACT_LABELS.get(key) or str(key).replace("_", " ")


def _fact_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{_fact_label(k)} {_fact_value(v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fact_value(v) for v in value) or "—"
    return str(value).replace("_", " ")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class JobChunk(models.Model):
    """One batch of a job's work. Marking it done is the idempotency guard: a re-delivered or retried
    batch finds it done and writes nothing twice."""

    class Stage(models.TextChoices):
        FIT = "fit", "fit"
        EMBED = "embed", "embed"
        FLAG = "flag", "flag"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="chunks")
    stage = models.CharField(max_length=10, choices=Stage.choices)
    index = models.PositiveIntegerField()
    items = models.JSONField(default=list, help_text="product or family ids")
    size = models.PositiveIntegerField(default=0, help_text="listings in this chunk")
    done_at = models.DateTimeField(null=True, blank=True)
    # the delivery working on it: the worker's node name (Celery hostname) and since when; the reaper
    # re-publishes the chunk when that worker stops answering (services.recovery)
    claimed_by = models.CharField(max_length=200, blank=True, default="")
    claimed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "stage", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "stage", "index"], name="one_chunk_per_job_stage_index")
        ]

    def __str__(self) -> str:
        return f"{self.stage} chunk {self.index} of job {self.job_id}"


def flag_uncertainty():
    """How far a flag's score is from the 0.5 boundary: the "most uncertain first" ordering of the queue
    and the API, and the expression of the index that serves it (flag_open_uncertainty)."""
    return Abs(F("score") - Value(0.5))


class Flag(models.Model):
    class Kind(models.TextChoices):
        WRONG_VARIANT = "wrong_variant", "wrong variant"
        DUPLICATE = "duplicate", "duplicate"

    class Status(models.TextChoices):
        OPEN = "open", "open"
        CONFIRMED = "confirmed", "confirmed"
        REJECTED = "rejected", "rejected"
        STALE = "stale", "stale"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="flags")
    counterpart = models.ForeignKey(
        Product, null=True, blank=True, on_delete=models.CASCADE, related_name="counterpart_flags"
    )
    score = models.FloatField()
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="flags")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    evidence = models.JSONField(default=dict, blank=True)
    heatmap = models.CharField(max_length=300, blank=True, default="")
    # the listings as they were when flagged (sha256 of title + image sha256 of both): a rejected
    # flag is raised again only when one of them changed
    fingerprint = models.CharField(max_length=64, blank=True, default="")
    last_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="last asserted by"
    )
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="claimed_flags",
    )
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    # the listing's category, kept by the database (triggers of migration 0012: set on insert, followed
    # when the listing moves), so the queue's category filter reads one index instead of probing the
    # listing of every open flag
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "kind", "-score"], name="flag_queue"),
            models.Index(
                fields=["category", "-score", "id"], condition=Q(status="open"), name="flag_open_category"
            ),
            models.Index(fields=["status", "-score", "id"], name="flag_queue_all_kinds"),
            models.Index(fields=["product", "kind"], name="flag_product_kind"),
            # the queue's "most uncertain first" (selectors.flag_queue: nearest the 0.5 boundary, then id)
            models.Index(flag_uncertainty(), "id", condition=Q(status="open"), name="flag_open_uncertainty"),
        ]
        constraints = [
            # at most one open flag of a kind per listing (and counterpart)
            models.UniqueConstraint(
                fields=["kind", "product", "counterpart"],
                condition=Q(status="open"),
                name="one_open_flag_per_pair",
                nulls_distinct=False,
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.product_id} ({self.status})"


class ApiToken(models.Model):
    """A bearer token for the HTTP API. Only its sha256 is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_sha256 = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="first characters, to tell tokens apart")
    name = models.CharField(max_length=100, blank=True, default="", help_text="what the token is for")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never expires")
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}... ({self.user})"

    def state(self, now=None) -> str:
        """ "active", "expired" or "revoked"."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class LoginFailure(models.Model):
    """A failed login (the login throttle counts them per account and per address)."""

    username = models.CharField(max_length=150, db_index=True)
    address = models.GenericIPAddressField(null=True, blank=True, db_index=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.username} from {self.address} at {self.at:%Y-%m-%d %H:%M:%S}"


class ReviewDecision(models.Model):
    """Append-only audit of reviewer decisions; an undo is a new row pointing at the one it undoes."""

    class Decision(models.TextChoices):
        CONFIRM = "confirm", "confirm error"
        REJECT = "reject", "not an error"
        SKIP = "skip", "skip"
        UNDO = "undo", "undo"

    flag = models.ForeignKey(Flag, on_delete=models.PROTECT, related_name="decisions")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    note = models.TextField(blank=True, default="")
    undoes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="undone_by"
    )
    client_request_id = models.CharField(max_length=100, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # the fix a reviewer gives with a confirmed wrong variant: the family it belongs to, or none here
    suggested_family = models.ForeignKey(
        VariationFamily, null=True, blank=True, on_delete=models.SET_NULL, related_name="suggested_by"
    )
    belongs_to_no_family = models.BooleanField(default=False)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.decision} on flag {self.flag_id} by {self.reviewer_id}"


class LabelledPair(models.Model):
    """A labelled training pair. Append-only: a retraction is a new row with `retracts` set."""

    class Relation(models.TextChoices):
        SAME_PRODUCT = "same_product", "same product"
        SAME_FAMILY = "same_family", "same family"
        DIFFERENT = "different", "different"

    class Source(models.TextChoices):
        REVIEW = "review", "reviewer decision"
        FAMILY = "family", "catalogue family"
        ADVERSARIAL = "adversarial", "adversarial title"

    a = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")
    b = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")
    relation = models.CharField(max_length=20, choices=Relation.choices)
    source = models.CharField(max_length=20, choices=Source.choices)
    decision = models.ForeignKey(
        ReviewDecision, null=True, blank=True, on_delete=models.PROTECT, related_name="labelled_pairs"
    )
    retracts = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="retracted_by"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # the writing transaction's id: the labels feed serves only rows of finished transactions, in
    # (txid, id) order, so a cursor never skips a label that commits late
    txid = models.BigIntegerField(
        db_default=models.Func(function="txid_current", output_field=models.BigIntegerField()),
        editable=False,
    )

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=~Q(a=models.F("b")), name="pair_of_two_listings")]
        # the feed's order: a page after a cursor is read from the index in order, however many labels
        # one transaction wrote (txid alone left a bulk write's labels to be sorted on every page)
        indexes = [models.Index(fields=["txid", "id"], name="labelledpair_feed_order")]

    def __str__(self) -> str:
        return f"{self.a_id} {self.relation} {self.b_id} ({self.source})"


class DashboardSnapshot(models.Model):
    """The admin dashboard's aggregates as of `computed_at` (one row): recomputed by the beat task
    `refresh_dashboard` every DASHBOARD_REFRESH_S, so the page reads one row instead of aggregating
    every flag and decision (seconds at a million listings); the page shows its age."""

    stats = models.JSONField()
    computed_at = models.DateTimeField()
    took_ms = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"dashboard as of {self.computed_at:%Y-%m-%d %H:%M:%S}"
