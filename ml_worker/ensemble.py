"""A model version as the app uses it: cross-fitted fold models plus one final model.

The catalogue's families are the training labels, and they contain the errors we hunt: a model that
trained on a wrong listing as a member of its family calls it consistent, so each family's wrong
variants are scored by a model that never saw it (cross-fitting; BENCHMARKS.md has what it is worth).
A version holds (each member with its own fine-tuned backbones when trained end to end):
- `folds[k]`: trained without the families of fold k; scores the wrong variants of fold k's families;
- `final`: trained on every family; gives the stored embeddings (pgvector kNN, search), the duplicate
  scores and the attention maps, which compare listings across families.
How a listing's evidence is weighed is fitted at score time, on errors planted into the catalogue
being scored, with the reviewers' decisions in force (ml_worker.evidence).
A family's fold is a stable hash of its code (ml_worker.folds), so it never changes between jobs or machines.

On disk: `final/`, `fold-0/`, ... (each a safetensors checkpoint, ml_worker.checkpoint) and
`manifest.json` with their sha256; the sha256 of the manifest identifies the
version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ml_worker.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from ml_worker.config import MapsConfig, TrainConfig
from ml_worker.features import FeatureCache, own_backbones
from ml_worker.folds import FamilyFolds
from ml_worker.train import Labels, ReviewPairs, TrainingSet, train_model
from ml_worker.validation import gate_noise, planted_validation, review_pair_validation
from ml_worker.zero_shot import ZeroShotModel

MANIFEST = "manifest.json"


@dataclass
class CrossFitModel:
    final: nn.Module
    folds: list[nn.Module] = field(default_factory=list)

    @property
    def config(self) -> MapsConfig:
        return self.final.config

    @property
    def family_folds(self) -> FamilyFolds:
        """How its fold models split the families (one fold, the final model's, without fold models)."""
        return FamilyFolds(len(self.folds))

    def fold_model(self, fold: int) -> nn.Module:
        """The model that scores the wrong variants of `fold`'s families (one that never trained on them)."""
        return self.folds[fold] if self.folds else self.final

    @classmethod
    def zero_shot(cls, config: MapsConfig | None = None) -> CrossFitModel:
        return cls(final=ZeroShotModel(config or MapsConfig()))


def save_cross_fit(model: CrossFitModel, directory: Path, *, metadata: dict | None = None) -> str:
    """Write every member checkpoint and the manifest; return the manifest's sha256."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    members = {"final": model.final} | {f"fold-{k}": m for k, m in enumerate(model.folds)}
    manifest = {
        "members": {name: save_checkpoint(m, directory / name) for name, m in members.items()},
        "folds": len(model.folds),
        **(metadata or {}),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return sha256_file(directory / MANIFEST)


def load_cross_fit(directory: Path, *, expected_sha256: str | None = None) -> CrossFitModel:
    """Load a saved version, refusing it when any file does not match its recorded sha256."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"{directory}: not a model version (no {MANIFEST})")
    digest = sha256_file(manifest_path)
    if expected_sha256 and digest != expected_sha256:
        raise CheckpointError(
            f"{manifest_path}: sha256 {digest} does not match the recorded {expected_sha256}; "
            "the model version is corrupt or was replaced"
        )
    manifest = json.loads(manifest_path.read_text())
    loaded = {
        name: load_checkpoint(directory / name, expected_sha256=sha)[0]
        for name, sha in manifest["members"].items()
    }
    # (a "wrong_variant_calibrator" of versions saved before the evidence combiners is not used)
    return CrossFitModel(final=loaded["final"], folds=[loaded[f"fold-{k}"] for k in range(manifest["folds"])])


def train_cross_fit(
    data: TrainingSet,
    config: MapsConfig,
    train_config: TrainConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    baseline: CrossFitModel | None = None,
    warm_start: CrossFitModel | None = None,
) -> tuple[CrossFitModel, dict]:
    """Train the fold models and the final model; validate every fold model on errors planted into
    the families it never saw and on the reviewer labels of those families (and `baseline`, the
    active version, on exactly the same data). The reviewer pairs of `data` join the training of
    every model whose families they belong to.

    End to end (`config.end_to_end`, the GPU path) every member fine-tunes its own backbones from
    `data.raw` (pixels and token ids); the frozen features then only mine look-alike negatives, and
    `data.features_of(model)` gives what a model with its own backbones reads (every listing through
    them, both views), for validating it (and a baseline that was trained end to end).

    `warm_start` (the active version; `warm_start_reason` says whether it can be one) starts each
    member from the same member of that version: fold k from its fold k, which never saw fold k's
    families either (a family's fold is a hash of its code), the final model from its final model."""
    if config.end_to_end and data.raw is None:
        raise ValueError("end_to_end training needs the raw inputs (ml_worker.end_to_end.load_raw_inputs)")

    def read(model: nn.Module) -> FeatureCache:
        if own_backbones(model) is None:
            return data.features
        if data.features_of is None:
            raise ValueError("a model with its own backbones needs features_of to be validated")
        return data.features_of(model)

    family_codes, labels, review_pairs = data.families, data.labels, data.review_pairs
    k = max(1, train_config.folds)
    fold = FamilyFolds(k).of_each(family_codes)
    runs = [*range(k), "final"] if k > 1 else ["final"]
    total = len(runs) * train_config.steps
    done = 0

    def step(s: int, _total: int) -> None:
        if on_progress:
            on_progress(done + s, total)

    if warm_start is not None and (reason := warm_start_reason(warm_start, config, k)):
        raise ValueError(f"cannot warm-start from that version: {reason}")
    fold_models, validation, baseline_validation = [], [], []
    scored, baseline_scored = [], []  # validation items of each fold, for the gate's paired bootstrap
    info = {"folds": k if k > 1 else 0, "listings": len(family_codes), "families": len(set(family_codes))}
    info["warm_start"] = warm_start is not None
    for run in runs:
        rows = np.nonzero(fold != run)[0] if run != "final" else np.arange(len(family_codes))
        init = None
        if warm_start is not None:
            init = warm_start.final if run == "final" else warm_start.folds[run]
        model, run_info = train_model(
            data,
            rows,
            config,
            train_config,
            device=device,
            progress=progress,
            desc=f"fold {run + 1}/{k}" if run != "final" else "final model",
            on_step=step,
            init=init,
        )
        info.setdefault("review_pairs_used", {})[str(run)] = run_info["review_pairs_used"]
        done += train_config.steps
        if run == "final":
            info["final_losses"] = run_info["final_losses"]
            final = model
            continue
        fold_models.append(model)
        held_out = np.nonzero(fold == run)[0]
        seed = train_config.seed + run
        held_out_pairs = review_pairs.within(held_out) if review_pairs is not None else None
        validation.append(validate_member(model, read(model), labels, held_out, held_out_pairs, seed, scored))
        if baseline is not None:
            reference = fold_model_for(baseline, run, k)
            baseline_validation.append(
                validate_member(
                    reference, read(reference), labels, held_out, held_out_pairs, seed, baseline_scored
                )
            )
    if k == 1:  # no held-out families: validate on planted errors among all (optimistic; noted)
        everyone = np.arange(len(family_codes))
        validation.append(validate_member(final, read(final), labels, everyone, None, train_config.seed))
    info["validation"] = mean_metrics(validation)
    if baseline is not None and baseline_validation:
        info["baseline_validation"] = mean_metrics(baseline_validation)
        info["gate_noise"] = gate_noise(scored, baseline_scored, seed=train_config.seed)
    return CrossFitModel(final=final, folds=fold_models), info


def warm_start_reason(version: CrossFitModel, config: MapsConfig, folds: int) -> str | None:
    """Why `version` cannot warm-start a version of `config` with `folds` folds (None: it can)."""
    members = [version.final, *version.folds]
    if any(isinstance(m, ZeroShotModel) for m in members):
        return "it is the zero-shot model (nothing trained to start from)"
    if version.config.to_dict() != config.to_dict():
        return "its model configuration differs"
    if len(version.folds) != (folds if folds > 1 else 0):
        return f"it has {len(version.folds)} fold models, this training {folds if folds > 1 else 0}"
    return None


def validate_member(
    model, features: FeatureCache, labels: Labels, rows, pairs: ReviewPairs | None, seed, items=None
) -> dict:
    """Planted errors among `rows`, and the reviewer labels `pairs` of those rows (their scored items
    appended to `items`, when given)."""
    planted = planted_validation(
        model, features, labels.family, labels.leaf_category, rows, seed=seed, items=items
    )
    return planted | (review_pair_validation(model, features, pairs, labels.family, items) if pairs else {})


def fold_model_for(model: CrossFitModel, fold: int, folds: int) -> nn.Module:
    """The baseline's model for the families of `fold` (its own fold model when it has the same
    number of folds, so it is measured on families it did not see either)."""
    if len(model.folds) == folds:
        return model.folds[fold]
    return model.final


def mean_metrics(runs: list[dict]) -> dict:
    """Numbers: the mean over runs (counts `validation_*`: the sum); curves: the pointwise mean."""
    out = {}
    for k in runs[0]:
        values = [r.get(k) for r in runs]
        if all(isinstance(v, int | float) for v in values):
            out[k] = sum(values) if k.startswith("validation_") else round(float(np.mean(values)), 4)
        elif all(isinstance(v, list) and len(v) == len(values[0]) for v in values):
            out[k] = [round(float(x), 4) for x in np.mean(values, axis=0)]
    return out
