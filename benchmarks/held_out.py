"""Catalogues scored outside the app, for the benchmarks that measure a model version where no reviewer
looked: the protocol's metrics.py, each catalogue's frozen features (kept on disk between runs), and the
scoring a score job runs (`ml_worker.scoring.score_catalogue`).

Used by review_simulator.py (`--held-out`), loop_offline.py and warm_start_value.py, so that a figure
in BENCHMARKS.md means the same computation whichever script printed it.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRICS = ROOT.parent / "shared" / "eval" / "metrics.py"
FIGURES = ("wrong_variant_ap", "wrong_variant_ap_wrong_image", "duplicate_ap")
STORED = ("top", "mid", "has_image", "tokens", "token_mask")  # a scoring FeatureCache's own fields


def load_metrics(path: Path = METRICS):
    """The protocol's metrics.py (../shared/eval beside the project) as a module."""
    spec = importlib.util.spec_from_file_location("eval_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def held_out_figures(metrics, catalogue_dir: Path, rows, scores) -> dict:
    """metrics.py's headline figures for `scores` (row -> ListingScore) of the catalogue `rows`."""
    from ml_worker.scoring import protocol_scores

    m = metrics.evaluate(catalogue_dir, protocol_scores(rows, scores))
    return {k: m[k] for k in FIGURES}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def held_out_features(
    model, d: Path, rows, features_dir: Path | None, device: str = "cpu", log: Callable[[str], None] = _stderr
):
    """The packaged-backbone features of a catalogue, kept in `features_dir` between runs (keyed by
    the listings and the backbone configuration, as the app's feature cache is)."""
    from safetensors.torch import load_file, save_file

    from ml_worker.features import FeatureCache, cache_key, features_for

    path = features_dir / f"held-out-{cache_key(rows, model.config)}.safetensors" if features_dir else None
    if path and path.exists():
        t = load_file(str(path))
        return FeatureCache(
            **t, top_aug=t["top"], mid_aug=t["mid"], adv_tokens=t["tokens"], adv_mask=t["token_mask"]
        )
    started = time.monotonic()
    features = features_for(model, rows, device=device)
    log(f"held-out {d}: features of {len(rows)} listings in {time.monotonic() - started:.0f} s")
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in asdict(features).items() if k in STORED}, str(path))
    return features


class Catalogue:
    """A catalogue's listings and everything each scoring of it needs, read once: its frozen features
    are extracted (or read from `features_dir`) the first time a frozen model scores it; a model with
    its own backbones (end to end) reads it through them every time."""

    def __init__(
        self, directory: Path, device: str = "cpu", features_dir: Path | None = None, log: Callable = _stderr
    ):
        from ml_worker.catalogue import load_catalogue
        from ml_worker.lexical import price_of

        self.dir, self.device, self.features_dir, self.log = Path(directory), device, features_dir, log
        self.listings = load_catalogue(self.dir)
        self.families = [x.family for x in self.listings]
        self.titles = [x.title for x in self.listings]
        self.prices = [price_of(x.attributes) for x in self.listings]
        self.frozen = None  # the packaged backbones' features, the same for every frozen model

    def features(self, model):
        from ml_worker.features import features_for, own_backbones

        if own_backbones(model) is not None:
            return features_for(model, self.listings, device=self.device)
        if self.frozen is None:
            self.frozen = held_out_features(
                model, self.dir, self.listings, self.features_dir, self.device, log=self.log
            )
        return self.frozen

    def scores(self, version, left_out: set[int] = frozenset()) -> dict:
        """As a score job scores the catalogue (`ml_worker.scoring.score_catalogue`, the routine the app
        runs stage by stage): a scorer fitted on errors planted into it, wrong variants from each
        listing's evidence channels (pair head of the fold model that never saw the family), duplicates
        from exact kNN candidates; `left_out` rows (confirmed wrong variants) scored themselves but
        nobody's sibling."""
        from ml_worker.scoring import score_catalogue

        features = self.features(version.final)
        scores, _ = score_catalogue(
            version, features, self.listings, device=self.device, excluded=left_out, features_of=self.features
        )
        return scores

    def figures(self, metrics, version) -> dict:
        """metrics.py's headline figures of `scores`."""
        return held_out_figures(metrics, self.dir, self.listings, self.scores(version))
