"""python manage.py train [--wait] [--activate] [--force] [--steps N] [--end-to-end | --frozen]
[--warm-start | --from-scratch]"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from catalog_review.management.jobwait import require_worker, wait_for_job
from catalog_review.schemas import TrainRequest, ValidationError, explain
from catalog_review.services.training import TrainingError, train_start


class Command(BaseCommand):
    help = (
        "Train a new model version from the catalogue's families (gpu queue) and print its validation "
        "metrics next to the active version's on the same held-out data. --activate promotes it when it "
        "is not worse (--force: regardless). Without --end-to-end / --frozen, TRAIN_END_TO_END decides "
        "(auto: fine-tune the backbones when the gpu worker has CUDA)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--wait", action="store_true", help="show a progress bar and return when done")
        parser.add_argument(
            "--activate", action="store_true", help="activate it if not worse than the active"
        )
        parser.add_argument("--force", action="store_true", help="with --activate: activate even if worse")
        parser.add_argument("--steps", type=int, default=None, help="optimisation steps per model")
        _either_or(
            parser,
            "end_to_end",
            (
                "--end-to-end",
                "fine-tune both backbones with the version (minutes on a GPU worker, hours on a CPU)",
            ),
            ("--frozen", "train on the packaged backbones' frozen features"),
        )
        _either_or(
            parser,
            "warm_start",
            (
                "--warm-start",
                "start from the active version's weights (fails if it cannot be one); default: "
                "TRAIN_WARM_START, warm when it can",
            ),
            ("--from-scratch", "train from the packaged backbones only"),
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, wait, activate, force, steps, end_to_end, warm_start, no_progress, **options):
        try:
            request = TrainRequest(
                steps=steps, activate=activate, force=force, end_to_end=end_to_end, warm_start=warm_start
            )
        except ValidationError as exc:
            raise CommandError(explain(exc.errors())) from None
        if wait:
            require_worker("gpu")
        try:
            job = train_start(request, reason="command")
        except TrainingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Train job #{job.pk} queued.")
        if not wait:
            return
        job = wait_for_job(job, desc="training", no_progress=no_progress)
        c = job.counts
        backbones = "fine-tuned end to end" if c.get("end_to_end") else "frozen"
        self.stdout.write(f"Model version {c['model_version']} (backbones {backbones})")
        self.stdout.write("validation (errors planted into held-out families), new vs active:")
        new, old = c.get("validation") or {}, c.get("parent_on_same_data") or {}
        for key in ("pr_auc", "wrong_variant_ap", "wrong_product_ap", "wrong_image_ap", "duplicate_ap"):
            if key in new:
                before = f"{old[key]:.4f}" if key in old else "-"
                self.stdout.write(f"  {key:18s} {new[key]:.4f}   active {before}")
        self.stdout.write(json.dumps({"validation": new, "active_on_same_data": old}))
        style = self.style.SUCCESS if c.get("activated") else self.style.WARNING
        self.stdout.write(style(("Activated: " if c.get("activated") else "Not activated: ") + c["gate"]))
        if c.get("rescore_job"):
            self.stdout.write(
                f"The catalogue is re-scored with it as job #{c['rescore_job']} "
                "(`score --wait` follows a fresh one; SCORE_AFTER_ACTIVATION=false turns this off)."
            )


def _either_or(parser, dest: str, yes: tuple[str, str], no: tuple[str, str]) -> None:
    """Two exclusive flags setting `dest` to True / False (neither: None, the server's setting decides)."""
    group = parser.add_mutually_exclusive_group()
    for (flag, help_text), value in ((yes, True), (no, False)):
        group.add_argument(flag, dest=dest, action="store_const", const=value, help=help_text)
