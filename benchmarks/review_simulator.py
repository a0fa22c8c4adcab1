"""A reviewer simulator: closes the loop through the HTTP API and measures each round.

Reads EVAL_DIR/truth.json (from ../shared/eval/inject.py), answers the top N open flags of the queue as
a perfect reviewer would (confirm if the truth says so, reject otherwise) through `POST
/api/flags/{id}/decision`, triggers retraining through `POST /api/jobs/train` (activate through the
gate; activation re-scores the catalogue), waits for both jobs through `GET /api/jobs/{id}`, and
reports the metrics of every round on the listings no reviewer has seen (../shared/eval/metrics.py's
`evaluate` on the catalogue minus the reviewed listings). At the end every round's version (and each
`--compare-version`, e.g. the rounds of an earlier run this one goes on from) is measured again on
one set: the listings no reviewer had seen by the last round. Decisions already in the database
count as seen.

A catalogue's planted errors run out as reviewers find them (three rounds of 100 decisions leave a
2,000-listing catalogue a handful), so "AP on the unreviewed listings" soon measures a few listings.
`--held-out DIR` (repeatable; other seeds of inject.py, never imported) measures where the errors
cannot run out: every round's version (scoring the whole catalogue as a score job does: a scorer
fitted on errors planted into it, `ml_worker.scoring.score_catalogue`) scores each held-out
catalogue, and metrics.py's figures are reported per round (`held_out`) with their mean wrong_variant
AP.

usage (the catalogue imported and scored, a stack running, an admin token):
  .venv/bin/python benchmarks/review_simulator.py EVAL_DIR --url http://127.0.0.1:8000 --token TOKEN \
      [--rounds 3] [--per-round 100] [--steps 200] [--ordering -score|uncertain] [--compare-version NAME]...
      [--end-to-end | --frozen] [--warm-start | --from-scratch] [--held-out DIR]... [--out results.jsonl]
(`--end-to-end` / `--frozen` choose each retraining's backbones; neither: the server's TRAIN_END_TO_END.
`--warm-start` / `--from-scratch`: each round's version starts from the active one's weights or from
scratch; neither: the server's TRAIN_WARM_START. Without `--steps` the server's default for that start.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from benchmarks.held_out import METRICS, Catalogue, load_metrics

ROOT = Path(__file__).resolve().parent.parent


class Api:
    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait(self, job_id: int, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, job = self.call("GET", f"/api/jobs/{job_id}")
            if job.get("status") in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(2)
        raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")


def check_same_database(api: Api) -> None:
    """This process reads the database through Django settings and acts through the server at
    --url: refuse to go on when they are not the same database (a stack started with another
    CATALOG_REVIEW_VAR_DIR), or the rounds would be measured on a catalogue nobody reviewed."""
    from catalog_review.models import Job

    job = Job.objects.order_by("-pk").first()
    if job is None:
        return
    status, served = api.call("GET", f"/api/jobs/{job.pk}")
    if status != 200 or served.get("created_at") != job.created_at.isoformat():
        raise SystemExit(
            f"the server at {api.url} does not serve the database this process reads (its job {job.pk} "
            f"differs): run the simulator with the settings of the stack (CATALOG_REVIEW_VAR_DIR, DATABASE_*)"
        )


def load_truth(eval_dir: Path) -> tuple[set[str], set[frozenset]]:
    truth = json.loads((eval_dir / "truth.json").read_text())
    wrong = {t["sku"] for t in truth.get("wrong_variant", [])}
    pairs = {frozenset((t["sku"], t["of"])) for t in truth.get("duplicate", [])}
    pairs |= {frozenset(p) for p in truth.get("duplicate_pairs", [])}
    return wrong, pairs


def metrics_on_unreviewed(eval_dir: Path, scores: dict, reviewed: set[str], metrics=None) -> dict:
    """The shared metrics (`metrics`: metrics.py as a module, default the one beside the project) on the
    catalogue minus the listings a reviewer has seen."""
    module = metrics or load_metrics(METRICS)
    rows = [json.loads(line) for line in open(eval_dir / "catalogue.jsonl") if line.strip()]
    truth = json.loads((eval_dir / "truth.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "catalogue.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows if r["sku"] not in reviewed)
        )
        kept = {
            "wrong_variant": [t for t in truth.get("wrong_variant", []) if t["sku"] not in reviewed],
            "duplicate": [
                t for t in truth.get("duplicate", []) if t["sku"] not in reviewed and t["of"] not in reviewed
            ],
        }
        (tmp / "truth.json").write_text(json.dumps(kept))
        return module.evaluate(tmp, scores)


def export_scores(version: str | None = None) -> dict:
    """A version's scores (default: the active one), through the app's own export command."""
    from django.core.management import call_command

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores.jsonl"
        call_command("export_scores", output=out, partial=True, model_version=version)
        return {json.loads(line)["sku"]: json.loads(line) for line in out.read_text().splitlines()}


class HeldOut:
    """Catalogues no reviewer sees, scored by each round's version as a score job scores a catalogue:
    `ml_worker.scoring.score_catalogue` (evidence channels, combiners fitted on plants, exact kNN)."""

    def __init__(self, dirs: list[Path], *, device: str = "cpu", features_dir: Path | None = None, log=print):
        self.metrics = load_metrics(METRICS)
        self.catalogues = [Catalogue(d, device, features_dir, log=log) for d in dirs]

    def measure(self, version_name: str) -> dict:
        from catalog_review.models import ModelVersion
        from catalog_review.services.model_versions import load_model

        version = load_model(ModelVersion.objects.get(name=version_name))
        out = {c.dir.name: c.figures(self.metrics, version) for c in self.catalogues}
        return {
            "mean_wrong_variant_ap": round(sum(v["wrong_variant_ap"] for v in out.values()) / len(out), 4),
            **out,
        }


def run(
    eval_dir: Path,
    api: Api,
    *,
    rounds: int = 3,
    per_round: int = 100,
    steps: int | None = None,
    ordering: str = "-score",
    earlier_versions: tuple[str, ...] = (),
    end_to_end: bool | None = None,
    warm_start: bool | None = None,
    job_timeout_s: float = 3600,
    held_out: HeldOut | None = None,
    log=print,
) -> list[dict]:
    from catalog_review.models import ModelVersion, ReviewDecision

    check_same_database(api)
    wrong, pairs = load_truth(eval_dir)
    # listings of decisions in force before this run (a run can go on from an earlier one) count as
    # seen; an undone decision taught the model nothing (a database put back to round 0 is unreviewed)
    reviewed: set[str] = set()
    seen = ReviewDecision.objects.filter(
        decision__in=[ReviewDecision.Decision.CONFIRM, ReviewDecision.Decision.REJECT], undone_by__isnull=True
    ).values_list("flag__product__sku", "flag__counterpart__sku")
    for sku, counterpart in seen:
        reviewed.add(sku)
        if counterpart:
            reviewed.add(counterpart)
    versions = [*earlier_versions, ModelVersion.objects.get(is_active=True).name]
    results = [
        {
            "round": 0,
            "model_version": versions[-1],
            "reviewed_before": len(reviewed),
            **metrics_on_unreviewed(eval_dir, export_scores(), reviewed),
        }
    ]
    if held_out:
        results[-1]["held_out"] = held_out.measure(versions[-1])
    log(json.dumps(results[-1]))
    for number in range(1, rounds + 1):
        status, page = api.call("GET", f"/api/flags?status=open&ordering={ordering}&limit={per_round}")
        if status != 200:
            raise RuntimeError(f"GET /api/flags: {status} {page}")
        confirmed = rejected = 0
        for flag in page["results"]:
            if flag["kind"] == "wrong_variant":
                truly = flag["sku"] in wrong
            else:
                truly = frozenset((flag["sku"], flag["counterpart_sku"])) in pairs
            decision = "confirm" if truly else "reject"
            status, body = api.call(
                "POST",
                f"/api/flags/{flag['id']}/decision",
                {"decision": decision, "client_request_id": f"sim-{uuid.uuid4()}"},
            )
            if status not in (200, 201, 409):
                raise RuntimeError(f"decision on flag {flag['id']}: {status} {body}")
            confirmed += decision == "confirm"
            rejected += decision == "reject"
            reviewed.add(flag["sku"])
            if flag["counterpart_sku"]:
                reviewed.add(flag["counterpart_sku"])
        started = time.monotonic()
        body = {"activate": True, "end_to_end": end_to_end, "warm_start": warm_start}
        body |= {"steps": steps} if steps else {}
        status, job = api.call("POST", "/api/jobs/train", body)
        if status != 202:
            raise RuntimeError(f"POST /api/jobs/train: {status} {job}")
        job = api.wait(job["id"], job_timeout_s)
        train_s = time.monotonic() - started
        if job["status"] != "succeeded":
            raise RuntimeError(f"train job {job['id']} {job['status']}: {job['error']}")
        score_s = 0.0
        if job["counts"].get("rescore_job"):
            started = time.monotonic()
            rescore = api.wait(job["counts"]["rescore_job"], job_timeout_s)
            score_s = time.monotonic() - started
            if rescore["status"] != "succeeded":
                raise RuntimeError(f"re-score job {rescore['id']} {rescore['status']}: {rescore['error']}")
        results.append(
            {
                "round": number,
                "decisions": confirmed + rejected,
                "confirmed": confirmed,
                "rejected": rejected,
                "reviewed_listings": len(reviewed),
                "model_version": job["counts"]["model_version"],
                "activated": job["counts"]["activated"],
                "gate": job["counts"]["gate"],
                "steps": job["scope"].get("steps"),
                "warm_start_from": job["scope"].get("warm_start_from"),
                "train_s": round(train_s, 1),
                "rescore_s": round(score_s, 1),
                **metrics_on_unreviewed(eval_dir, export_scores(), reviewed),
            }
        )
        if held_out:  # the new version, activated or not
            results[-1]["held_out"] = held_out.measure(job["counts"]["model_version"])
        log(json.dumps(results[-1]))
        if job["counts"]["activated"]:
            versions.append(job["counts"]["model_version"])
    # every round's version on the same listings: those no reviewer had seen by the end
    for number, version in enumerate(versions, start=-len(earlier_versions)):
        results.append(
            {
                "final_unreviewed_set": True,
                "version_of_round": number,  # negative: versions of rounds before this run
                "model_version": version,
                "reviewed_listings": len(reviewed),
                **metrics_on_unreviewed(eval_dir, export_scores(version), reviewed),
            }
        )
        log(json.dumps(results[-1]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--token", required=True, help="an admin's API token (manage.py create_api_token)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--ordering", choices=["-score", "uncertain"], default="-score")
    ap.add_argument(
        "--compare-version",
        action="append",
        default=[],
        help="an earlier round's version to measure on the final unreviewed set (repeatable, oldest first)",
    )
    backbones = ap.add_mutually_exclusive_group()
    backbones.add_argument("--end-to-end", dest="end_to_end", action="store_const", const=True)
    backbones.add_argument("--frozen", dest="end_to_end", action="store_const", const=False)
    start = ap.add_mutually_exclusive_group()
    start.add_argument("--warm-start", dest="warm_start", action="store_const", const=True)
    start.add_argument("--from-scratch", dest="warm_start", action="store_const", const=False)
    ap.add_argument(
        "--held-out",
        type=Path,
        action="append",
        default=[],
        help="a catalogue no reviewer sees (inject.py output), scored by every round's version (repeatable)",
    )
    ap.add_argument(
        "--features-dir", type=Path, help="keep the held-out catalogues' frozen features here between runs"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for d in [args.eval_dir, *args.held_out]:
        if not (d / "catalogue.jsonl").is_file() or not (d / "truth.json").is_file():
            ap.error(f"{d} is not an evaluation directory (catalogue.jsonl + truth.json)")
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")
    import django

    django.setup()
    results = run(
        args.eval_dir,
        Api(args.url, args.token),
        rounds=args.rounds,
        per_round=args.per_round,
        steps=args.steps,
        ordering=args.ordering,
        earlier_versions=tuple(args.compare_version),
        end_to_end=args.end_to_end,
        warm_start=args.warm_start,
        held_out=HeldOut(args.held_out, features_dir=args.features_dir) if args.held_out else None,
    )
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
