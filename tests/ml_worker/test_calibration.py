"""Wrong-variant evidence and the calibrator fitted on reviewer decisions."""

import json

import numpy as np
import pytest
import torch

from ml_worker.calibration import (
    EVIDENCE,
    PLAIN_SCORE,
    WrongVariantCalibrator,
    cross_validated_gain,
    family_agreement,
    wrong_variant_evidence,
)
from ml_worker.checkpoint import CheckpointError
from ml_worker.config import TrainConfig
from ml_worker.ensemble import CrossFitModel, fit_calibrator, load_cross_fit, save_cross_fit, train_cross_fit
from ml_worker.modeling_maps import MapsModel
from ml_worker.scoring import encode_all, score_listings
from tests.ml_worker.conftest import families_of, random_features


@pytest.fixture
def scored(tiny):
    torch.manual_seed(0)
    families = families_of(3, 4)
    features = random_features(tiny, families)
    model = MapsModel(tiny).eval()
    return model, encode_all(model, features), families


def test_evidence_holds_the_plain_score_and_leaves_confirmed_listings_out(scored):
    model, out, _families = scored
    groups = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    agreement = family_agreement(model, out, groups)
    evidence = wrong_variant_evidence(model, out, groups)
    assert set(evidence) == set(range(10))
    for i, e in evidence.items():
        assert e.features.shape == (len(EVIDENCE),)
        assert e.score == pytest.approx(1 - max(agreement[i]))  # the closest sibling decides
        assert e.features[EVIDENCE.index("disagreement_mean")] == pytest.approx(1 - np.mean(agreement[i]))
    # two-listing family: nobody to be an outlier against
    assert evidence[8].features[EVIDENCE.index("disagreement_outlier")] == 0.0
    assert evidence[0].features[EVIDENCE.index("log_family_size")] == pytest.approx(np.log(4))

    left_out = wrong_variant_evidence(model, out, groups, excluded={3, 9})
    assert left_out[0].counted == [True, True, False]
    assert left_out[0].score == pytest.approx(1 - max(agreement[0][:2]))
    assert left_out[0].features[EVIDENCE.index("log_family_size")] == pytest.approx(np.log(3))
    # the confirmed listing itself is still compared with the others; its lone sibling has nobody left
    assert left_out[3].score == pytest.approx(1 - max(agreement[3]))
    assert left_out[8].features is None and left_out[8].score is None
    assert left_out[9].score == pytest.approx(1 - agreement[9][0])


def test_calibrator_learns_which_evidence_separates_decisions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, len(EVIDENCE)))
    confirmed = x[:, 4] > 0  # only the image distance says anything
    calibrator = WrongVariantCalibrator.fit(x, confirmed)
    assert (calibrator.confirmed, calibrator.rejected) == (int(confirmed.sum()), int((~confirmed).sum()))
    assert int(np.argmax(np.abs(calibrator.coef))) == 4
    p = calibrator.probability(x)
    assert p[confirmed].min() > p[~confirmed].max() - 0.2 and p[confirmed].mean() > 0.7
    again = WrongVariantCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    np.testing.assert_allclose(again.probability(x), p)

    assert WrongVariantCalibrator.fit(x[:12], np.arange(12) < 4) is None, "4 confirmed: too few"
    # a row of weight 2 counts as that row twice; rows under weight 1 are not reviewers' decisions
    twice = WrongVariantCalibrator.fit(np.vstack([x, x[:1]]), np.append(confirmed, confirmed[0]))
    weighted = WrongVariantCalibrator.fit(x, confirmed, weight=np.r_[2.0, np.ones(39)])
    np.testing.assert_allclose(weighted.coef, twice.coef, atol=1e-3)
    assert weighted.coef != calibrator.coef
    half = WrongVariantCalibrator.fit(x, confirmed, weight=np.where(confirmed, 1.0, 0.5), decided=confirmed)
    assert (half.confirmed, half.rejected) == (int(confirmed.sum()), 0)
    with pytest.raises(ValueError, match="fitted on evidence"):
        WrongVariantCalibrator.from_dict(calibrator.to_dict() | {"features": ["disagreement_mean"]})


def test_score_listings_uses_the_calibrator(scored):
    model, out, families = scored
    names = len(EVIDENCE)
    coef = [5.0 * (k == PLAIN_SCORE) for k in range(names)]
    calibrator = WrongVariantCalibrator([0.0] * names, [1.0] * names, coef, -2.0, 5, 5)
    plain = score_listings(model, out, families)
    calibrated = score_listings(model, out, families, calibrator=calibrator)
    for i, s in plain.items():
        expected = 1 / (1 + np.exp(-(5 * s.wrong_variant_score - 2)))
        assert calibrated[i].wrong_variant_score == pytest.approx(expected)
        assert calibrated[i].duplicate_score == s.duplicate_score


def test_a_version_fits_its_calibrator_on_decisions_and_keeps_it(tiny, tmp_path):
    families = families_of(8, 4)
    features = random_features(tiny, families)
    decided = {4 * f: f % 2 == 0 for f in range(8)} | {4 * f + 1: f % 2 == 1 for f in range(8)}
    train = TrainConfig(steps=3, folds=2, families_per_batch=4)
    category = [("A", "B")] * len(families)
    model, info = train_cross_fit(
        features, families, category, tiny, train, progress=False, wrong_variant_labels=decided
    )
    summary = info["wrong_variant_calibrator"]
    assert counts(summary) == (8, 8, 16)  # siblings: the other two members of each decided family
    # kept: on families it was not fitted on it ranks the decisions better than the plain score
    assert summary["fitted"] and summary["cross_validated_ap"] >= summary["plain_ap"]
    assert model.calibrator is not None and len(model.calibrator.coef) == len(EVIDENCE)
    save_cross_fit(model, tmp_path / "v")
    assert load_cross_fit(tmp_path / "v").calibrator == model.calibrator

    few = {0: True, 1: False}
    model, info = train_cross_fit(
        features, families, category, tiny, train, progress=False, wrong_variant_labels=few
    )
    assert model.calibrator is None
    assert (
        info["wrong_variant_calibrator"]["fitted"] is False
        and "needs 5 confirmed" in info["wrong_variant_calibrator"]["note"]
    )


def test_an_unusable_calibrator_refuses_the_version(tiny, tmp_path):
    names = len(EVIDENCE)
    calibrator = WrongVariantCalibrator([0.0] * names, [1.0] * names, [1.0] * names, 0.0, 5, 5)
    save_cross_fit(CrossFitModel(final=MapsModel(tiny), calibrator=calibrator), tmp_path / "v")
    manifest = tmp_path / "v" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["wrong_variant_calibrator"]["features"] = ["something", "else"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="unusable wrong-variant calibrator"):
        load_cross_fit(tmp_path / "v")


def test_reviewed_siblings_stand_in_for_rejections(tiny):
    """Five confirmed wrong variants and no rejection: the families' other members were seen by the
    reviewer and count as "not wrong" at the sibling weight; without them there is no calibrator."""
    families = families_of(8, 4)
    features = random_features(tiny, families)
    model = CrossFitModel(
        final=MapsModel(tiny).eval(), folds=[MapsModel(tiny).eval(), MapsModel(tiny).eval()]
    )
    confirmed = {4 * f: True for f in range(5)}
    calibrator, summary = fit_calibrator(model, lambda m: features, families, confirmed, sibling_weight=0)
    assert calibrator is None and summary["reviewed_siblings"] == 0 and "needs 5" in summary["note"]
    calibrator, summary = fit_calibrator(model, lambda m: features, families, confirmed, sibling_weight=0.5)
    assert counts(summary) == (5, 0, 15) and kept_if_better(calibrator, summary)
    if calibrator is not None:
        assert (calibrator.confirmed, calibrator.rejected) == (5, 0)
    calibrator, summary = fit_calibrator(model, lambda m: features, families, confirmed, sibling_weight=1.0)
    assert counts(summary) == (5, 0, 15) and kept_if_better(calibrator, summary)
    # a decided listing is never also a sibling row: one rejection replaces one sibling row
    calibrator, summary = fit_calibrator(
        model, lambda m: features, families, confirmed | {1: False}, sibling_weight=0.5
    )
    assert counts(summary) == (5, 1, 14) and kept_if_better(calibrator, summary)


def counts(summary: dict) -> tuple[int, int, int]:
    return summary["confirmed"], summary["rejected"], summary["reviewed_siblings"]


def kept_if_better(calibrator, summary: dict) -> bool:
    """A fitted calibrator is kept exactly when its cross-validated AP is not below the plain score's."""
    better = summary["cross_validated_ap"] >= summary["plain_ap"]
    return (
        summary["fitted"] == better and (calibrator is not None) == better and ("note" in summary) != better
    )


def test_a_calibrator_is_kept_only_where_it_beats_the_plain_score_on_unseen_families():
    rng = np.random.default_rng(1)
    n = 120
    families = [f"F{i // 4}" for i in range(n)]  # 30 families of 4
    x = rng.normal(size=(n, len(EVIDENCE)))
    weight = np.ones(n)
    # the decisions follow the image distance; the plain score is noise: the calibrator wins
    wrong = x[:, EVIDENCE.index("image_descriptor_distance")] > 0.8
    calibrated, plain = cross_validated_gain(x, wrong, weight, families)
    assert calibrated > 0.7 and calibrated > plain + 0.3
    # the decisions follow the plain score itself, all else is noise: refitting cannot beat it
    wrong = x[:, PLAIN_SCORE] > 0.8
    calibrated, plain = cross_validated_gain(x, wrong, weight, families)
    assert plain == pytest.approx(1.0) and calibrated <= plain
    # one class only, or one family: nothing to compare
    assert cross_validated_gain(x, np.zeros(n, dtype=bool), weight, families) is None
    assert cross_validated_gain(x, wrong, weight, ["F"] * n) is None
