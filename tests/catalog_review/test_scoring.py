"""Scoring in the app, end to end through a real Celery worker, real Postgres+pgvector and the real
(pretrained) backbones: embeddings, flags, heatmaps, idempotent chunks, a killed worker, decided
flags surviving re-scoring, corrupt checkpoints, training jobs, incremental scoring on import."""

from __future__ import annotations

import io
import json
import signal

import numpy as np
import psutil
import pytest
import torch
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image, ImageDraw

from catalog_review.models import Flag, Job, JobChunk, ModelVersion, Product, ProductEmbedding, VersionScorer
from catalog_review.schemas import TrainRequest, ValidationError
from catalog_review.services.catalogue_import import catalogue_import
from catalog_review.services.model_versions import active_version, load_model, promotion_decision
from catalog_review.services.scoring import score_start
from catalog_review.services.training import train_start
from ml_worker.checkpoint import CheckpointError
from ml_worker.config import MapsConfig
from ml_worker.ensemble import CrossFitModel, save_cross_fit
from ml_worker.evidence import DUPLICATE_CHANNELS, WRONG_VARIANT_CHANNELS
from ml_worker.modeling_maps import MapsModel
from tests.conftest import wait_for
from tests.factories import UserFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SHAPES = ["circle", "square", "triangle", "cross", "ring", "bar"]
COLOURS = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (40, 160, 60), "yellow": (230, 200, 40)}


def draw(shape: str, colour: tuple, size: int = 112) -> bytes:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(image)
    box = (20, 20, size - 20, size - 20)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(size // 2, 15), (15, size - 15), (size - 15, size - 15)], fill=colour)
    elif shape == "cross":
        d.rectangle((size // 2 - 10, 15, size // 2 + 10, size - 15), fill=colour)
        d.rectangle((15, size // 2 - 10, size - 15, size // 2 + 10), fill=colour)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=12)
    else:
        d.rectangle((15, size // 2 - 12, size - 15, size // 2 + 12), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def write_catalogue(directory, *, families: int = 6, colours: int = 3, extra_title: str = "") -> list[dict]:
    """`families` products in `colours` colours each, one planted wrong listing (a bar lamp in the
    circle family) and one re-listed duplicate of circle/red under another family code."""
    rows = []
    directory.mkdir(parents=True, exist_ok=True)
    for _f, shape in enumerate(SHAPES[:families]):
        for name in list(COLOURS)[:colours]:
            sku = f"{shape}-{name}"
            (directory / f"{sku}.jpg").write_bytes(draw(shape, COLOURS[name]))
            rows.append(
                {
                    "sku": sku,
                    "title": f"{shape.title()} lamp, {name}",
                    "family": f"FAM-{shape}",
                    "category": ["Home", "Lamps"],
                    "image": f"{sku}.jpg",
                }
            )
    (directory / "planted.jpg").write_bytes(draw("bar", COLOURS["yellow"]))
    rows.append(
        {
            "sku": "PLANTED",
            "title": "Bar shelf, yellow",
            "family": "FAM-circle",
            "category": ["Home", "Lamps"],
            "image": "planted.jpg",
        }
    )
    rows.append({**rows[0], "sku": "DUP", "family": "FAM-relisted", "title": rows[0]["title"] + extra_title})
    (directory / "catalogue.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return rows


@pytest.fixture
def catalogue(tmp_path):
    rows = write_catalogue(tmp_path / "catalogue")
    catalogue_import(path=tmp_path / "catalogue" / "catalogue.jsonl")
    return rows


def finished(job_id: int, timeout: float = 240) -> Job:
    job = wait_for(
        lambda: Job.objects.filter(pk=job_id, status__in=Job.FINISHED).first(),
        timeout=timeout,
        message=f"job {job_id} to finish",
    )
    assert job.status == Job.Status.SUCCEEDED, job.error
    return job


def test_score_job_embeds_flags_and_exports(celery_worker, catalogue, media_root, tmp_path):
    job = score_start()
    version = ModelVersion.objects.get(is_active=True)
    assert version.name == "zero-shot", "a fresh installation scores with the zero-shot version"
    job = finished(job.pk)
    products = Product.objects.count()
    assert (job.done, job.total) == (2 * products, 2 * products)
    assert job.counts["listings"] == products
    embeddings = ProductEmbedding.objects.filter(model_version=version)
    assert embeddings.count() == products
    assert not embeddings.filter(scored_at__isnull=True).exists()
    assert len(embeddings.first().vector) == 256

    dup = ProductEmbedding.objects.get(product__sku="DUP", model_version=version)
    assert dup.duplicate_of.sku == "circle-red", "the re-listing's best match is the original"
    flag = Flag.objects.get(kind=Flag.Kind.DUPLICATE, status=Flag.Status.OPEN, product__sku="circle-red")
    assert flag.counterpart.sku == "DUP"
    assert flag.model_version == version
    assert flag.evidence["duplicate_score"] >= job.scope["thresholds"]["duplicate"]
    assert (media_root / flag.heatmap).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (media_root / flag.evidence["counterpart_heatmap"]).exists()
    planted = ProductEmbedding.objects.get(product__sku="PLANTED", model_version=version)
    members = ProductEmbedding.objects.filter(product__family__code="FAM-circle").exclude(
        product__sku="PLANTED"
    )
    assert planted.wrong_variant_score > max(m.wrong_variant_score for m in members)
    assert len(planted.evidence["family_agreement"]) == 3
    assert not Flag.objects.exclude(model_version=version).exists()

    out = tmp_path / "scores.jsonl"
    call_command("export_scores", output=out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == products
    assert set(lines[0]) == {
        "sku",
        "family",
        "wrong_variant_score",
        "duplicate_score",
        "duplicate_of",
        "model_version",
    }
    by_sku = {x["sku"]: x for x in lines}
    assert by_sku["DUP"]["duplicate_of"] == "circle-red"
    assert by_sku["DUP"]["wrong_variant_score"] is None, "a one-listing family has no wrong_variant score"
    assert by_sku["PLANTED"]["model_version"] == "zero-shot"


def test_wrong_variant_flags_are_capped_to_a_share_of_the_catalogue(celery_worker, catalogue, settings):
    settings.FLAG_WRONG_VARIANT_THRESHOLD = 0.0  # a calibration that does not fit: "flag everything"
    settings.FLAG_WRONG_VARIANT_MAX_FRACTION = 0.25
    job = finished(score_start().pk)
    scores = sorted(
        ProductEmbedding.objects.filter(wrong_variant_score__isnull=False).values_list(
            "wrong_variant_score", flat=True
        )
    )
    thresholds = job.scope["thresholds"]
    assert thresholds["wrong_variant_configured"] == 0.0
    assert thresholds["wrong_variant_scored"] == len(scores)
    assert thresholds["wrong_variant"] == thresholds["wrong_variant_cap"] > 0.0
    flagged = Flag.objects.filter(kind=Flag.Kind.WRONG_VARIANT, status=Flag.Status.OPEN)
    above = [v for v in scores if v >= thresholds["wrong_variant"]]
    assert 1 <= flagged.count() == len(above) < len(scores)
    assert len(above) <= 0.25 * len(scores) + 1
    lowest_flagged = min(flagged.values_list("score", flat=True))
    assert lowest_flagged >= max(v for v in scores if v < thresholds["wrong_variant"]), "the top scores"


def test_rescoring_keeps_decisions_updates_open_flags_and_marks_stale(celery_worker, catalogue, settings):
    # every listing's best match is raised: this test is about the flags' bookkeeping, and the edited
    # re-listing below must still count (a re-titled copy scores low: the planted re-listings of a
    # 19-listing catalogue are re-typed, not re-worded)
    settings.FLAG_DUPLICATE_THRESHOLD = 0.0
    finished(score_start().pk)
    dup_flag = Flag.objects.get(kind=Flag.Kind.DUPLICATE, product__sku="circle-red", counterpart__sku="DUP")
    dup_flag.status = Flag.Status.REJECTED  # a reviewer said: not a duplicate
    dup_flag.save()
    calm = (
        ProductEmbedding.objects.filter(wrong_variant_score__isnull=False)
        .select_related("product")
        .order_by("wrong_variant_score")
        .first()
    )
    assert calm.wrong_variant_score < settings.FLAG_WRONG_VARIANT_THRESHOLD
    old_open = Flag.objects.create(
        kind=Flag.Kind.WRONG_VARIANT, product=calm.product, score=0.9, model_version=calm.model_version
    )
    still_open = Flag.objects.filter(status=Flag.Status.OPEN).exclude(pk=old_open.pk)
    open_before = {f.pk: f.score for f in still_open}

    job = finished(score_start().pk)
    dup_flag.refresh_from_db()
    assert dup_flag.status == Flag.Status.REJECTED, "decided flags are never touched"
    assert not Flag.objects.filter(
        kind=Flag.Kind.DUPLICATE, product__sku="circle-red", counterpart__sku="DUP", status=Flag.Status.OPEN
    ).exists(), "a rejected pair is not raised again while neither listing changed"
    assert job.counts.get("duplicate_suppressed", 0) >= 1
    old_open.refresh_from_db()
    assert old_open.status == Flag.Status.STALE
    for pk in open_before:  # open flags still holding were updated in place, not duplicated
        assert Flag.objects.get(pk=pk).last_job_id == job.pk

    # the re-listing changes its title: the pair is a new question for the reviewers
    Product.objects.filter(sku="DUP").update(title="Circle lamp, red (new)")
    finished(score_start(scope={"skus": ["DUP"]}).pk)
    assert Flag.objects.filter(
        kind=Flag.Kind.DUPLICATE, product__sku="circle-red", counterpart__sku="DUP", status=Flag.Status.OPEN
    ).exists()


def review_rescore(n: int) -> Job:
    """The n-th score job a review decision started, once finished."""
    job = wait_for(
        lambda: (
            Job.objects.filter(kind=Job.Kind.SCORE, scope__reason="review").order_by("pk")[n - 1 : n].first()
        ),
        timeout=60,
        message=f"review re-score job {n}",
    )
    return finished(job.pk)


def test_a_confirmed_wrong_variant_stops_counting_against_its_siblings(
    celery_worker, catalogue, reviewer, client, settings
):
    """Once a reviewer confirms PLANTED is not of FAM-circle, its family is re-scored at once and the
    circle lamps are scored against each other alone (PLANTED shown, marked excluded); PLANTED keeps
    its own score; an undo re-scores and restores it."""
    from catalog_review.services import review

    def circle_scores():
        rows = ProductEmbedding.objects.filter(
            model_version=active_version(), product__family__code="FAM-circle"
        ).select_related("product")
        return {e.product.sku: e for e in rows}

    settings.RESCORE_FAMILY_ON_CONFIRM = True
    finished(score_start().pk)
    before = circle_scores()
    flag, _ = Flag.objects.get_or_create(
        kind=Flag.Kind.WRONG_VARIANT,
        product=Product.objects.get(sku="PLANTED"),
        status=Flag.Status.OPEN,
        defaults={"score": 0.9, "model_version": active_version()},
    )
    review.decide(flag_id=flag.pk, user=reviewer, decision="confirm")
    rescored = review_rescore(1)  # the confirmation re-scores the family by itself
    assert rescored.scope["family_ids"] == [flag.product.family_id]
    assert rescored.scope_label.startswith("the family of a confirmed wrong variant")
    after = circle_scores()
    for sku in ("circle-red", "circle-blue", "circle-green"):
        agreement = {a["sku"]: a for a in after[sku].evidence["family_agreement"]}
        assert agreement["PLANTED"].get("excluded") is True and len(agreement) == 3
        counted = [a["p_same_family"] for a in agreement.values() if not a.get("excluded")]
        channels = after[sku].evidence["channels"]
        assert channels["pair_disagreement"] == pytest.approx(1 - max(counted), abs=1e-3)  # (rounded)
        assert channels["log_family_size"] == pytest.approx(np.log(3), abs=1e-3), "2 siblings + itself"
        # with the bar left out, it can no longer vouch for a sibling as its closest match
        assert channels["pair_disagreement"] >= before[sku].evidence["channels"]["pair_disagreement"] - 1e-3
    assert after["PLANTED"].evidence["channels"] == before["PLANTED"].evidence["channels"]
    assert not any(a.get("excluded") for a in after["PLANTED"].evidence["family_agreement"])

    # the flag page of a sibling shows the excluded member as not counted
    sibling, _ = Flag.objects.update_or_create(
        kind=Flag.Kind.WRONG_VARIANT,
        product=after["circle-red"].product,
        status=Flag.Status.OPEN,
        defaults={
            "score": 0.8,
            "model_version": active_version(),
            "evidence": {"family_agreement": after["circle-red"].evidence["family_agreement"]},
        },
    )
    client.force_login(reviewer)
    page = client.get(reverse("flag", args=[sibling.pk])).content.decode()
    assert page.count("not counted in the score") == 1

    review.undo(flag_id=flag.pk, user=reviewer)
    review_rescore(2)  # and so does the undo
    restored = circle_scores()
    assert not any(a.get("excluded") for a in restored["circle-red"].evidence["family_agreement"])
    assert restored["circle-red"].evidence["channels"] == before["circle-red"].evidence["channels"]


def test_redelivered_chunks_write_nothing_twice(celery_worker, catalogue):
    from catalog_review.gpu_tasks import embed_chunk

    job = score_start()
    for chunk in JobChunk.objects.filter(job=job):  # every embed chunk delivered twice, concurrently
        embed_chunk.delay(chunk_id=chunk.pk)
    job = finished(job.pk)
    scored = dict(ProductEmbedding.objects.values_list("pk", "scored_at"))
    for chunk in JobChunk.objects.filter(job=job, stage=JobChunk.Stage.EMBED):  # and re-delivered late
        # run here, to the end, before the assertions (a delivery to the worker could still be queued)
        assert embed_chunk.apply(kwargs={"chunk_id": chunk.pk}).get() == "nothing to do"
    job.refresh_from_db()
    assert job.done == job.total
    assert ProductEmbedding.objects.count() == Product.objects.count()
    assert dict(ProductEmbedding.objects.values_list("pk", "scored_at")) == scored
    assert Flag.objects.filter(status=Flag.Status.OPEN).count() == job.counts["open_flags"]


def test_a_worker_killed_mid_job_loses_and_doubles_nothing(celery_worker, catalogue, settings):
    settings.SCORE_CHUNK_LISTINGS = 3  # many chunks, so the kill lands mid-job
    job = score_start()
    chunks = JobChunk.objects.filter(job=job, stage=JobChunk.Stage.EMBED)
    assert chunks.count() >= 5
    wait_for(lambda: chunks.filter(done_at__isnull=False).exists(), timeout=120, message="a first chunk")
    job.refresh_from_db()
    assert not job.is_finished, "the job finished before the kill: make it bigger"
    pool = psutil.Process(celery_worker.pid).children()
    for child in pool:  # SIGKILL every pool process, mid-task; the worker forks new ones
        child.send_signal(signal.SIGKILL)
    job = finished(job.pk, timeout=300)
    assert job.done == job.total
    assert ProductEmbedding.objects.count() == Product.objects.count()
    assert not JobChunk.objects.filter(job=job, done_at__isnull=True).exists()


def test_a_worker_killed_outright_has_its_work_redone_by_the_reaper(
    celery_worker, worker_env, catalogue, settings, media_root
):
    """`kill -9` of a whole worker (main process and pool): its claimed chunks and the messages it held
    would wait for the broker's visibility timeout (an hour). The reaper re-publishes them as soon as the
    worker stops answering; the job finishes with nothing lost or doubled."""
    import os

    from catalog_review.celery import app as celery_app
    from catalog_review.services.recovery import reap_stalled_work
    from tests.conftest import start_worker

    settings.SCORE_CHUNK_LISTINGS = 3  # many chunks, so the kill lands mid-job
    settings.REAPER_GRACE_S = 1
    queues = ("gpu", "default")
    for queue in queues:  # the session's worker steps aside: the doomed one takes the job
        celery_app.control.cancel_consumer(queue, destination=[celery_worker.node], reply=True)
    doomed, _ = start_worker(worker_env, f"doomed-{os.getpid()}", media_root.parent / "doomed.log")
    try:
        job = score_start()
        chunks = JobChunk.objects.filter(job=job, stage=JobChunk.Stage.EMBED)
        wait_for(lambda: chunks.filter(done_at__isnull=False).exists(), timeout=180, message="a first chunk")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
    finally:
        if doomed.poll() is None:
            os.killpg(doomed.pid, signal.SIGKILL)
        for queue in queues:
            celery_app.control.add_consumer(queue, destination=[celery_worker.node], reply=True)
    job.refresh_from_db()
    assert not job.is_finished, "the job finished before the kill: make it bigger"
    held = JobChunk.objects.filter(job=job, done_at__isnull=True).count()
    assert held, "work was left undone"

    def reaped_and_done():
        reap_stalled_work()
        return Job.objects.filter(pk=job.pk, status__in=Job.FINISHED).first()

    job = wait_for(reaped_and_done, timeout=180, interval=2.0, message="the reaped job to finish")
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.done == job.total
    assert ProductEmbedding.objects.count() == Product.objects.count()
    assert not JobChunk.objects.filter(job=job, done_at__isnull=True).exists()


def test_flags_carry_every_evidence_channel_and_the_job_s_fitted_scorer(celery_worker, catalogue, settings):
    """Stage 0 fits the version's scorer on the catalogue (stored with the version); every scored listing
    and every flag carries each channel's value, the two kinds' probabilities and the lines a reviewer
    reads; scores are probabilities."""
    settings.FLAG_WRONG_VARIANT_THRESHOLD = 0.0
    settings.FLAG_WRONG_VARIANT_MAX_FRACTION = 1.0
    job = finished(score_start().pk)
    version = active_version()
    scorer = VersionScorer.objects.get(pk=job.scope["scorer_id"])
    assert scorer.model_version == version and scorer.job_id == job.pk
    assert scorer.listings == Product.objects.count()
    assert scorer.meta["wrong_variant"]["kinds"]["wrong_image"]["summary"]["planted"] > 0
    assert JobChunk.objects.get(job=job, stage=JobChunk.Stage.FIT).done_at is not None
    scored = ProductEmbedding.objects.filter(model_version=version, wrong_variant_score__isnull=False)
    assert scored.exists()
    for e in scored:
        assert 0.0 <= e.wrong_variant_score <= 1.0
        assert set(e.evidence["channels"]) == set(WRONG_VARIANT_CHANNELS)
        assert set(e.evidence["kinds"]) == {"wrong_product", "wrong_image"}
        p = 1 - (1 - e.evidence["kinds"]["wrong_product"]) * (1 - e.evidence["kinds"]["wrong_image"])
        assert e.wrong_variant_score == pytest.approx(p, abs=1e-3)
    flag = Flag.objects.filter(kind=Flag.Kind.WRONG_VARIANT, product__sku="PLANTED").get()
    assert set(flag.evidence["channels"]) == set(WRONG_VARIANT_CHANNELS)
    assert flag.evidence["lines"] and all(line["text"] for line in flag.evidence["lines"])
    # the circle lamps' other members have heatmaps on the flag page too
    assert set(flag.evidence["member_heatmaps"]) == {"circle-red", "circle-blue", "circle-green"}
    duplicate = Flag.objects.get(kind=Flag.Kind.DUPLICATE, status=Flag.Status.OPEN, product__sku="circle-red")
    assert set(duplicate.evidence["channels"]) == set(DUPLICATE_CHANNELS)
    assert duplicate.evidence["channels"]["attributes_differ"] == 0


def test_evaluate_and_a_score_job_give_the_same_scores(celery_worker, catalogue, tmp_path):
    """One scoring routine: `python -m ml_worker.evaluate --zero-shot` on the catalogue file and the
    app's score job on the imported catalogue agree listing by listing."""
    from ml_worker.evaluate import main as evaluate

    finished(score_start().pk)
    app = tmp_path / "app.jsonl"
    call_command("export_scores", output=app)
    offline = tmp_path / "evaluate.jsonl"
    assert (
        evaluate(
            [
                str(tmp_path / "catalogue"),
                "--out",
                str(offline),
                "--zero-shot",
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    ours = {x["sku"]: x for x in map(json.loads, app.read_text().splitlines())}
    theirs = {x["sku"]: x for x in map(json.loads, offline.read_text().splitlines())}
    assert set(ours) == set(theirs)
    for sku, line in theirs.items():
        for key in ("wrong_variant_score", "duplicate_score"):
            if line[key] is None:
                assert ours[sku][key] is None, (sku, key)
            else:
                assert ours[sku][key] == pytest.approx(line[key], abs=0.01), (sku, key)
        assert ours[sku]["duplicate_of"] == line["duplicate_of"], sku


def test_a_corrupt_checkpoint_is_refused(celery_worker, catalogue, settings):
    directory = settings.MODEL_DIR / "tampered"
    digest = save_cross_fit(CrossFitModel(final=MapsModel(MapsConfig())), directory)
    version = ModelVersion.objects.create(
        name="tampered",
        checkpoint_path=str(directory),
        checkpoint_sha256=digest,
        config={"kind": "maps-cross-fit", "model": MapsConfig().to_dict()},
    )
    weights = directory / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        load_model(version)
    job = wait_for(lambda: Job.objects.filter(pk=score_start(version=version).pk).first(), message="job row")
    job = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status=Job.Status.FAILED).first(),
        timeout=120,
        message="the job to fail",
    )
    assert "corrupt or was replaced" in job.error
    assert not ProductEmbedding.objects.filter(model_version=version).exists()


def test_train_registers_gates_and_scores_with_a_new_version(celery_worker, catalogue, reviewer):
    from catalog_review.services import review

    zero_shot = active_version()
    planted = Flag.objects.create(
        kind=Flag.Kind.WRONG_VARIANT,
        product=Product.objects.get(sku="PLANTED"),
        score=0.9,
        model_version=zero_shot,
    )
    review.decide(flag_id=planted.pk, user=reviewer, decision="confirm")  # a reviewer label for training
    job = finished(train_start(TrainRequest(steps=2, activate=True)).pk, timeout=300)
    version = ModelVersion.objects.get(name=job.counts["model_version"])
    assert version.parent == zero_shot
    assert job.scope["warm_start_from"] is None  # nothing trained to start from: from scratch
    assert version.training_data["family_listings"] == Product.objects.count()
    assert version.training_data["review_pairs"] == 3
    assert version.training_data["listings_moved_out_of_families"] == 1
    # the three "different family" pairs train the final model (and the fold that holds the family)
    used = version.metrics["review_pairs_used"]
    assert used["final"]["different_family"] == 3
    assert sorted(used[fold].get("different_family", 0) for fold in ("0", "1")) == [0, 3]
    validation = version.metrics["validation"]
    assert 0 <= validation["pr_auc"] <= 1
    assert version.metrics["parent_on_same_data"]["pr_auc"] is not None
    noise = version.metrics["gate_noise"]  # the paired bootstrap beside the parent (may be {} when tiny)
    ok, _reason = promotion_decision(validation, version.metrics["parent_on_same_data"], noise)
    assert job.counts["activated"] == ok
    version.refresh_from_db()
    assert version.is_active == ok

    forced = finished(train_start(TrainRequest(activate=True, force=True)).pk, timeout=300)
    assert forced.counts["activated"] is True
    parent = ModelVersion.objects.get(name=forced.counts["model_version"]).parent
    if parent == version:  # a trained version was active: the next starts from it, for fewer steps
        assert forced.scope["warm_start_from"] == version.name
        assert forced.scope["steps"] == 1  # the worker's TRAIN_WARM_STEPS (tests/conftest.py)
        assert f"from {version.name}" in forced.scope_label
    else:
        assert forced.scope["warm_start_from"] is None and forced.scope["steps"] == 2  # TRAIN_STEPS
    rescore = finished(forced.counts["rescore_job"])  # activation re-scores with the new version
    assert rescore.scope["model_version"] == forced.counts["model_version"]
    trained = ModelVersion.objects.get(is_active=True)
    assert trained.name == forced.counts["model_version"]
    assert ModelVersion.objects.filter(is_active=True).count() == 1

    finished(score_start().pk)  # the cross-fitted version scores (fold models for wrong variants)
    assert ProductEmbedding.objects.filter(model_version=trained).count() == Product.objects.count()


def test_a_second_worker_with_its_own_empty_model_dir_scores_with_a_version_the_first_trained(
    celery_worker, worker_env, catalogue, settings, media_root, tmp_path
):
    """Workers on two machines share the database, the broker and the model store, no disk: a version
    trained by one is fetched from the store (and verified) by the other, into its own MODEL_DIR."""
    import os

    from catalog_review.celery import app as celery_app
    from catalog_review.services.model_store import model_store
    from tests.conftest import start_worker

    job = finished(train_start(TrainRequest(steps=1, activate=True, force=True)).pk, timeout=300)
    version = ModelVersion.objects.get(name=job.counts["model_version"])
    assert version.checkpoint_path == version.name, "a key in the model store, not a path on one machine"
    assert model_store().exists(f"{version.name}/manifest.json")
    assert (settings.MODEL_DIR / version.name / "manifest.json").exists(), "the trainer keeps its copy"

    other_models = tmp_path / "other-machine" / "models"
    env = worker_env | {
        "MODEL_DIR": str(other_models),
        "FEATURE_CACHE_DIR": str(tmp_path / "other-machine" / "feature-cache"),
    }
    queues = ("gpu", "default")
    for queue in queues:  # the first worker steps aside: the second one does the whole job
        celery_app.control.cancel_consumer(queue, destination=[celery_worker.node], reply=True)
    second, _node = start_worker(env, f"second-{os.getpid()}", media_root.parent / "second.log")
    try:
        scored = finished(score_start(version=version).pk, timeout=300)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)
        for queue in queues:
            celery_app.control.add_consumer(queue, destination=[celery_worker.node], reply=True)
    assert ProductEmbedding.objects.filter(model_version=version).count() == Product.objects.count()
    log = (media_root.parent / "second.log").read_text()
    assert "embed_chunk" in log and "succeeded" in log, "the second worker did the embedding"
    fetched = other_models / version.name
    assert (fetched / "manifest.json").read_bytes() == (
        settings.MODEL_DIR / version.name / "manifest.json"
    ).read_bytes()
    assert scored.scope["model_version_id"] == version.pk


def test_a_version_trained_end_to_end_scores_through_its_own_backbones(celery_worker, catalogue):
    """An end-to-end train job on a CPU worker (the GPU path; 3 steps, past OneCycleLR's warm-up):
    every member fine-tunes its own backbones, and the score job embeds the catalogue through the
    final model's and scores each family's wrong variants through its fold model's."""
    from catalog_review.services.scoring import product_listing
    from ml_worker.features import extract_features
    from ml_worker.scoring import encode_all

    job = finished(
        train_start(TrainRequest(steps=3, activate=True, force=True, end_to_end=True)).pk, timeout=600
    )
    assert job.counts["end_to_end"] is True and "end to end" in job.scope_label
    version = ModelVersion.objects.get(name=job.counts["model_version"], is_active=True)
    assert version.config["model"]["end_to_end"] is True
    finished(job.counts["rescore_job"], timeout=600)

    model = load_model(version)
    assert all(m.backbones() is not None for m in (model.final, *model.folds))
    products = list(Product.objects.select_related("family", "category").order_by("id"))
    listings = [product_listing(p) for p in products]
    own = extract_features(
        listings, model.config, progress=False, training=False, backbones=model.final.backbones()
    )
    packaged = extract_features(listings, model.config, progress=False, training=False)
    want, before = encode_all(model.final, own).embedding, encode_all(model.final, packaged).embedding
    stored = {e.product_id: e for e in ProductEmbedding.objects.filter(model_version=version)}
    got = torch.as_tensor(np.stack([stored[p.pk].vector for p in products]))
    assert (got - want).abs().max() < 1e-5
    assert (got - before).abs().max() > 5e-3  # not what the packaged backbones give (0.02 here)
    in_families = [
        p for p in products if p.family.code.startswith("FAM-") and p.family.code != "FAM-relisted"
    ]
    assert all(stored[p.pk].wrong_variant_score is not None for p in in_families)

    with pytest.raises(ValidationError, match="end_to_end"):
        TrainRequest(end_to_end="yes")


def test_train_command_waits_and_reports_the_version(celery_worker, catalogue):
    with pytest.raises(CommandError, match="cannot warm-start from the active version zero-shot: it is the"):
        call_command("train", "--wait", "--warm-start", "--steps", "1", "--no-progress", stdout=io.StringIO())
    with pytest.raises(ValidationError, match="warm_start"):
        TrainRequest(warm_start="yes")
    out = io.StringIO()
    call_command("train", "--wait", "--frozen", "--steps", "1", "--no-progress", stdout=out)
    text = out.getvalue()
    version = ModelVersion.objects.exclude(name="zero-shot").get()
    assert f"Model version {version.name} (backbones frozen)" in text
    assert "pr_auc" in text and "Not activated" in text  # no --activate
    assert version.config["model"]["end_to_end"] is False and not version.is_active


def test_train_end_to_end_setting_decides_unless_the_job_asks(settings):
    from catalog_review.services.training import end_to_end_for

    settings.TRAIN_END_TO_END = "auto"
    assert end_to_end_for(None, "cuda") is True and end_to_end_for(None, "cpu") is False
    assert end_to_end_for(True, "cpu") is True and end_to_end_for(False, "cuda") is False
    settings.TRAIN_END_TO_END = "on"
    assert end_to_end_for(None, "cpu") is True
    settings.TRAIN_END_TO_END = "off"
    assert end_to_end_for(None, "cuda") is False and end_to_end_for(True, "cuda") is True


def test_import_rescores_only_the_changed_families(celery_worker, catalogue, tmp_path):
    finished(score_start().pk)
    version = active_version()
    before = dict(
        ProductEmbedding.objects.filter(model_version=version).values_list("product__sku", "scored_at")
    )
    rows = write_catalogue(tmp_path / "catalogue")
    rows[3]["title"] = "Square lamp, red, now with a dimmer"  # family FAM-square changes
    (tmp_path / "catalogue" / "catalogue.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    report = catalogue_import(path=tmp_path / "catalogue" / "catalogue.jsonl")
    assert report.updated == 1 and report.score_job_id
    job = finished(report.score_job_id)
    assert job.counts["listings"] == 3
    after = dict(
        ProductEmbedding.objects.filter(model_version=version).values_list("product__sku", "scored_at")
    )
    changed = {sku for sku in after if after[sku] != before[sku]}
    assert changed == {"square-red", "square-blue", "square-green"}


def test_commands_refuse_bad_requests(catalogue, tmp_path):
    with pytest.raises(CommandError, match="not scored by model version zero-shot yet"):
        call_command("export_scores", output=tmp_path / "s.jsonl")
    call_command("export_scores", output=tmp_path / "s.jsonl", partial=True)
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == Product.objects.count()
    with pytest.raises(CommandError, match="directory does not exist"):
        call_command("export_scores", output=tmp_path / "nope" / "s.jsonl")
    with pytest.raises(CommandError, match="no family with code 'nope'"):
        call_command("score", family="nope")
    with pytest.raises(CommandError, match="unknown sku"):
        call_command("score", sku=["circle-red", "ghost"])
    with pytest.raises(CommandError, match="no model version named 'v9'"):
        call_command("score", model_version="v9")
    with pytest.raises(CommandError, match="force only makes sense with activate"):
        call_command("train", force=True)
    with pytest.raises(CommandError, match="not allowed with argument"):
        call_command("train", "--end-to-end", "--frozen")


def test_image_less_listings_are_matched_by_their_words(celery_worker, tmp_path, settings, client):
    """A title-only catalogue: the duplicate stage compares the titles word by word (IDF over the
    catalogue), their numbers and prices, so a re-listing in other words beats a look-alike title
    of another product, and the candidate priced like the listing beats one worded as closely."""
    from tests.ml_worker.test_lexical import LOOK_ALIKE, PARTNER, PRICED, PRICES, QUERY, TITLES

    rows = [
        {"sku": f"T{i}", "title": title, "family": f"F{i}", "category": ["Software"], "image": None}
        for i, title in enumerate(TITLES)
    ]
    # words tie between the last two; the one priced like the first is its re-listing
    for title, price in zip(PRICED, [PRICES[0], PRICES[2], PRICES[1]], strict=True):
        rows.append({"sku": f"P{len(rows)}", "title": title, "family": f"F{len(rows)}", "image": None})
        rows[-1] |= {"category": ["Software"], "attributes": {"price": price}}
    path = tmp_path / "titles.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    settings.FLAG_DUPLICATE_THRESHOLD = 0.0  # every best match becomes a flag: their evidence is checked
    catalogue_import(path=path)
    finished(score_start().pk)
    sku = {r["title"]: r["sku"] for r in rows}
    query = ProductEmbedding.objects.get(product__sku=sku[QUERY])
    assert query.duplicate_of.sku == sku[PARTNER] != sku[LOOK_ALIKE]
    priced = ProductEmbedding.objects.get(product__sku=sku[PRICED[0]])
    assert priced.duplicate_of.sku == sku[PRICED[2]]

    # the reviewer sees what the words said: similarity, disagreeing numbers, both prices
    from ml_worker.lexical import numbers

    flags = list(Flag.objects.filter(kind=Flag.Kind.DUPLICATE).select_related("product", "counterpart"))
    assert flags
    for flag in flags:
        a, b = flag.product, flag.counterpart
        assert 0.0 <= flag.evidence["word_similarity"] <= 1.0
        na, nb = numbers(a.title), numbers(b.title)
        differ = [sorted(na), sorted(nb)] if na and nb and not na & nb else None
        assert flag.evidence.get("numbers_differ") == differ, (a.title, b.title)
    assert any(f.evidence.get("numbers_differ") for f in flags)
    pair = next(f for f in flags if {f.product.sku, f.counterpart.sku} == {sku[PRICED[0]], sku[PRICED[2]]})
    assert pair.evidence["prices"] == [49.99, 52.0]  # the flag's listing first (the lower id)
    client.force_login(UserFactory(username="words-reviewer"))
    page = client.get(reverse("flag", args=[pair.pk])).content.decode()
    assert "no image to compare; word similarity" in page and "Prices 49.99 vs 52.00." in page
