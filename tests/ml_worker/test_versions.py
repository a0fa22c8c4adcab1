"""Zero-shot model, cross-fitted versions (save/load/tamper), planted validation, feature views."""

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml_worker.calibration import family_agreement
from ml_worker.checkpoint import CheckpointError
from ml_worker.config import TrainConfig
from ml_worker.ensemble import (
    CrossFitModel,
    load_cross_fit,
    mean_metrics,
    save_cross_fit,
    train_cross_fit,
    warm_start_reason,
)
from ml_worker.folds import FamilyFolds
from ml_worker.losses import HierarchicalProxyLoss
from ml_worker.modeling_maps import MapsModel
from ml_worker.scoring import FamilyPairs, encode_all, encode_inputs
from ml_worker.train import ReviewPairs, TrainingSet, _proxies_from_class_means
from ml_worker.validation import RankedItems, gate_noise, planted_validation, review_pair_validation
from ml_worker.zero_shot import ZeroShotModel
from tests.ml_worker.conftest import families_of, gpu, random_features, random_inputs


def test_zero_shot_speaks_the_model_interface(tiny):
    model = ZeroShotModel(tiny)
    x = random_inputs(tiny, batch=4)
    out = model(x)
    assert out.embedding.shape == (4, tiny.embed_dim)
    assert torch.allclose(out.embedding[:3].norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.spatial_attention.sum((1, 2)), torch.ones(4), atol=1e-5)
    # the listing without an image (last) has no image vector and a uniform attention map
    assert out.image_embedding[-1].abs().sum() == 0
    assert torch.allclose(out.spatial_attention[-1], torch.full((7, 7), 1 / 49))
    logits = model.pair_logits(out, out, torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert torch.allclose(logits[0], logits[1]), "symmetric"
    self_logits = model.pair_logits(out, out, torch.tensor([0]), torch.tensor([0]))
    assert (self_logits > logits[:1]).all(), "a listing matches itself best"


def test_zero_shot_is_deterministic(tiny):
    x = random_inputs(tiny, batch=3)
    assert torch.equal(ZeroShotModel(tiny)(x).embedding, ZeroShotModel(tiny)(x).embedding)


def test_family_folds_are_a_stable_hash_of_the_code_and_spread_families():
    folds = FamilyFolds(2)
    # saved versions were trained without these folds' families: the assignment must never change
    assert [folds.of(f"family-{i}") for i in range(12)] == [0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0]
    assert [FamilyFolds(3).of(f"family-{i}") for i in range(12)] == [0, 1, 1, 0, 1, 2, 1, 2, 2, 0, 1, 0]
    assert 70 < folds.of_each(f"family-{i}" for i in range(200)).sum() < 130
    assert FamilyFolds(1).of("anything") == FamilyFolds(0).of("anything") == 0

    codes = ["family-0", "family-1", "family-0", "family-5", "family-2"]
    assert {k: v.tolist() for k, v in folds.groups(codes).items()} == {0: [0, 2, 3], 1: [1, 4]}
    assert folds.fitted_without(0, codes).tolist() == [1, 4]
    assert FamilyFolds(1).fitted_without(0, codes).tolist() == [0, 1, 2, 3, 4]


def test_family_pairs_read_each_family_with_the_fold_model_that_never_trained_on_it(tiny):
    torch.manual_seed(0)
    model = CrossFitModel(
        final=MapsModel(tiny).eval(), folds=[MapsModel(tiny).eval(), MapsModel(tiny).eval()]
    )
    families = ["family-0", "family-0", "family-1", "family-1", "family-5"]  # folds 0, 0, 1, 1, 0
    features = random_features(tiny, families)
    pairs = FamilyPairs(model, features, families)
    listing_rows, sibling_rows = [0, 2, 4], [[1], [3], []]
    got = pairs(listing_rows, sibling_rows)
    assert got[2] == [], "a listing with no sibling is read against nothing"
    for a, fold in ((0, 0), (1, 1)):
        member = model.folds[fold]
        out = encode_all(member, features)
        i, j = torch.tensor([listing_rows[a]]), torch.tensor(sibling_rows[a])
        expected = torch.sigmoid(member.pair_logits(out, out, i, j)[:, 0]).item()
        assert got[a] == [pytest.approx(expected, abs=1e-6)]
        other = model.folds[1 - fold]
        other_out = encode_all(other, features)
        assert got[a][0] != pytest.approx(
            torch.sigmoid(other.pair_logits(other_out, other_out, i, j)[:, 0]).item()
        )


def test_cross_fit_round_trip_and_tampering(tiny, tmp_path):
    torch.manual_seed(0)
    folds = [MapsModel(tiny).eval(), MapsModel(tiny).eval()]
    model = CrossFitModel(final=MapsModel(tiny).eval(), folds=folds)
    digest = save_cross_fit(model, tmp_path / "v1", metadata={"note": "test"})
    loaded = load_cross_fit(tmp_path / "v1", expected_sha256=digest)
    x = random_inputs(tiny)
    assert torch.allclose(loaded.final(x).embedding, model.final(x).embedding)
    assert len(loaded.folds) == 2
    assert loaded.family_folds == FamilyFolds(2)
    assert loaded.fold_model(1) is loaded.folds[1]
    assert CrossFitModel.zero_shot(tiny).fold_model(0) is not None

    with pytest.raises(CheckpointError, match="does not match the recorded"):
        load_cross_fit(tmp_path / "v1", expected_sha256="0" * 64)
    weights = tmp_path / "v1" / "fold-1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        load_cross_fit(tmp_path / "v1", expected_sha256=digest)
    with pytest.raises(CheckpointError, match="not a model version"):
        load_cross_fit(tmp_path / "nothing-here")


def test_planted_validation_separates_a_good_model_from_a_blind_one(tiny):
    """Zero-shot on features where families are clearly apart sees the planted errors; a model whose
    outputs ignore the input cannot (AP near the positive share)."""
    families = families_of(30, 3)
    features = random_features(tiny, families, seed=1)
    family = np.array([int(f[1:]) for f in families])
    leaf = family % 3
    rows = np.arange(len(families))
    good = planted_validation(ZeroShotModel(tiny), features, family, leaf, rows, seed=0)

    class Blind(torch.nn.Module):  # sees the inputs, but its pair head answers 0.5 to everything
        def __init__(self):
            super().__init__()
            self.inner = ZeroShotModel(tiny)

        def forward(self, x):
            return self.inner(x)

        def pair_logits(self, a, b, ia=None, ib=None):
            n = len(ia) if ia is not None else a.embedding.shape[0]
            return torch.zeros(n, 2)

    blind = planted_validation(Blind(), features, family, leaf, rows, seed=0)
    assert good["wrong_product_ap"] > 0.9
    assert good["wrong_variant_ap"] > blind["wrong_variant_ap"] + 0.3
    assert good["duplicate_ap"] > 0.45  # the positive share is 0.25: a blind ranking gets about that
    assert good["validation_families"] == 30
    for curves in (good, blind):  # interpolated precision on the recall grid: never rising with recall
        for kind in ("wrong_variant", "duplicate"):
            curve = curves[f"pr_curve_{kind}"]
            assert len(curve) == 21 and all(a >= b for a, b in itertools.pairwise(curve))
    assert good["pr_curve_wrong_variant"][10] > blind["pr_curve_wrong_variant"][10]
    mean = mean_metrics([good, blind])
    assert mean["pr_curve_duplicate"][5] == pytest.approx(
        (good["pr_curve_duplicate"][5] + blind["pr_curve_duplicate"][5]) / 2, abs=1e-4
    )
    assert mean["validation_families"] == 60


def test_planted_validation_says_when_there_is_too_little_data(tiny):
    families = [*families_of(2, 2), "F2"]
    features = random_features(tiny, families)
    family = np.array([0, 0, 1, 1, 2])
    out = planted_validation(ZeroShotModel(tiny), features, family, np.zeros(5), np.array([0, 1, 4]))
    assert "too few" in out["note"]


def cross_fit(tiny, families: list[str], **options):
    """A 3-step, 2-fold version of generated features, validated against the zero-shot one."""
    features = random_features(tiny, families)
    data = TrainingSet(
        features, families, [("A", "B")] * len(families), review_pairs=options.pop("review_pairs", None)
    )
    model, info = train_cross_fit(
        data,
        tiny,
        TrainConfig(steps=3, folds=2, families_per_batch=4),
        progress=False,
        baseline=CrossFitModel.zero_shot(tiny),
        **options,
    )
    return features, model, info


def test_train_cross_fit_validates_fold_models_against_a_baseline(tiny):
    _, model, info = cross_fit(tiny, families_of(16, 3))
    assert len(model.folds) == 2 and model.final is not None
    assert info["folds"] == 2 and info["families"] == 16
    for key in ("pr_auc", "wrong_variant_ap", "duplicate_ap"):
        assert 0 <= info["validation"][key] <= 1
        assert 0 <= info["baseline_validation"][key] <= 1
    noise = info["gate_noise"]["pr_auc"]  # the paired bootstrap over each fold's validation families
    assert noise["sd"] > 0 and noise["p05"] <= noise["p95"] and noise["resamples"] >= 150
    json.dumps(info)  # recorded in the database as JSON


def test_the_gate_noise_is_a_paired_bootstrap_over_families(tiny):
    """The same model against itself differs by exactly 0 on every resample; a good model against a
    random one by a margin that no resample closes; fewer families, a wider spread."""
    families = families_of(40, 3)
    features = random_features(tiny, families, seed=1)
    family = np.array([int(f[1:]) for f in families])
    leaf = family % 3

    class Blind(ZeroShotModel):  # its pair head answers at random (a fixed function of the pair)
        def pair_logits(self, a, b, ia=None, ib=None):
            ia = ia if ia is not None else torch.arange(a.embedding.shape[0])
            ib = ib if ib is not None else ia
            noise = torch.sin(ia.float() * 7.1 + ib.float() * 13.3 + a.embedding[ia, 0] * 50)
            return noise[:, None].expand(-1, 2) * 3

    def scored(model, rows):
        items = []
        planted_validation(model, features, family, leaf, rows, seed=0, items=items)
        return items

    rows = np.arange(len(families))
    good, blind = scored(ZeroShotModel(tiny), rows), scored(Blind(tiny), rows)
    same = gate_noise(good, good)["pr_auc"]
    assert same == {"sd": 0.0, "p05": 0.0, "p95": 0.0, "resamples": 300}
    apart = gate_noise(good, blind)["pr_auc"]
    assert apart["p05"] > 0.1 and apart["sd"] > 0
    few = np.flatnonzero(family < 8)
    wide = gate_noise(scored(ZeroShotModel(tiny), few), scored(Blind(tiny), few))["pr_auc"]
    assert wide["sd"] > apart["sd"]
    assert gate_noise(good, blind, seed=3) == gate_noise(good, blind, seed=3)  # seeded


def test_the_bootstraps_average_precision_is_sklearns():
    """Sorted once, reweighed per draw: the same AP as sklearn's, ties and zero weights included."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(2, 40))
        scores = np.round(rng.random(n), int(rng.integers(1, 3)))  # one or two decimals: many ties
        labels = (rng.random(n) < 0.3).astype(float)
        weight = rng.integers(0, 3, n).astype(float)  # 0 = the item's family was not drawn
        if len(np.unique(labels[weight > 0])) < 2:
            continue
        expected = average_precision_score(labels, scores, sample_weight=weight)
        assert RankedItems(scores, labels).average_precision(weight) == pytest.approx(expected, abs=1e-12)
        checked += 1
    assert checked > 100
    ranked = RankedItems(np.array([0.9, 0.8, 0.1]), np.array([0.0, 1.0, 1.0]))
    assert ranked.average_precision(np.ones(3)) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert ranked.average_precision(np.array([0.0, 1.0, 1.0])) == 1.0  # the top negative not drawn


def test_the_gate_noise_covers_held_out_reviewer_labels(tiny):
    families = families_of(20, 3)
    features = random_features(tiny, families, seed=2)
    family = np.array([int(f[1:]) for f in families])
    rng = np.random.default_rng(0)
    a = rng.integers(len(families), size=60)
    b = rng.integers(len(families), size=60)
    pairs = ReviewPairs(a, b, np.r_[np.zeros(30), np.ones(30)].astype(int), family[a] == family[b])
    pairs.target[[0, 30]] = [True, True]  # both answers on both heads
    items = {}
    for name, model in (("new", ZeroShotModel(tiny)), ("old", ZeroShotModel(tiny))):
        items[name] = []
        planted_validation(model, features, family, family % 2, np.arange(len(families)), items=items[name])
        review_pair_validation(model, features, pairs, family, items[name])
    noise = gate_noise(items["new"], items["old"])
    assert set(noise) == {"pr_auc", "review_same_family_ap", "review_same_product_ap", "gate_with_review"}
    assert noise["gate_with_review"]["keys"] == ["review_same_family_ap", "review_same_product_ap"]
    assert noise["gate_with_review"]["sd"] == 0.0  # the same model twice


def test_augmented_inputs_are_the_relisting_view(tiny):
    features = random_features(tiny, families_of(2, 2))
    idx = torch.arange(4)
    assert torch.equal(features.inputs(idx, augmented=True).top, features.top_aug[idx].float())
    assert not torch.equal(features.inputs(idx).top, features.inputs(idx, augmented=True).top)


@pytest.mark.gpu
@gpu
def test_versions_train_and_score_on_cuda(tiny):
    """The worker's CUDA path: cross-fitted training on the GPU (validated on the CPU), then the
    family agreement the app computes with a model on the GPU and encoder outputs on the CPU."""
    families = families_of(12, 3)
    features, model, info = cross_fit(tiny, families, device="cuda")
    assert 0 <= info["validation"]["pr_auc"] <= 1
    groups = [list(range(i, i + 3)) for i in range(0, len(families), 3)]
    inputs = features.inputs(torch.arange(len(families)))
    for member in (model.final, ZeroShotModel(tiny)):
        on_cpu = family_agreement(member.cpu(), encode_inputs(member, inputs), groups)
        member.to("cuda")
        on_gpu = family_agreement(member, encode_inputs(member, inputs.to("cuda")), groups)
        assert on_cpu.keys() == on_gpu.keys()
        for k in on_cpu:
            assert np.allclose(on_cpu[k], on_gpu[k], atol=1e-3)


def test_a_warm_start_begins_each_member_where_the_same_member_of_the_start_left_off(tiny):
    families = families_of(16, 3)
    features, start, _ = cross_fit(tiny, families)
    still = TrainConfig(steps=2, folds=2, families_per_batch=4, lr=0.0)  # nothing moves: what it began with
    data = TrainingSet(features, families, [("A", "B")] * len(families))
    model, info = train_cross_fit(data, tiny, still, progress=False, warm_start=start)
    assert info["warm_start"] is True
    for new, old in [(model.final, start.final), *zip(model.folds, start.folds, strict=True)]:
        for (name, a), b in zip(new.named_parameters(), old.parameters(), strict=True):
            assert torch.equal(a, b), name
    # fold k begins from fold k, never from the final model (which trained on fold k's families)
    assert not all(
        torch.equal(a, b) for a, b in zip(start.folds[0].parameters(), start.final.parameters(), strict=True)
    )
    cold, info = train_cross_fit(data, tiny, still, progress=False)
    assert info["warm_start"] is False
    assert not torch.equal(next(cold.final.parameters()), next(start.final.parameters()))


def test_only_a_trained_version_of_the_same_shape_can_warm_start(tiny):
    families = families_of(16, 3)
    _, start, _ = cross_fit(tiny, families)
    assert warm_start_reason(start, tiny, 2) is None
    assert "zero-shot" in warm_start_reason(CrossFitModel.zero_shot(tiny), tiny, 2)
    assert "2 fold models, this training 3" in warm_start_reason(start, tiny, 3)
    assert "configuration" in warm_start_reason(start, dataclasses.replace(tiny, d_model=2 * tiny.d_model), 2)
    with pytest.raises(ValueError, match="cannot warm-start from that version: it is the zero-shot"):
        cross_fit(tiny, families, warm_start=CrossFitModel.zero_shot(tiny))


def test_warm_started_proxies_are_the_mean_embeddings_of_their_listings(tiny):
    features = random_features(tiny, families_of(6, 3))
    model = MapsModel(tiny).eval()
    proxies = HierarchicalProxyLoss([6, 2], tiny.embed_dim, [1.0, 0.5], kmeans_levels={1: 2})
    untouched = proxies.levels[0].proxies.detach().clone()
    labels = [torch.as_tensor(np.repeat(np.arange(6), 3))]
    _proxies_from_class_means(proxies, model, features, np.arange(15), labels, "cpu")  # family 5 left out
    model.eval()
    with torch.no_grad():
        embedding = F.normalize(model(features.inputs(torch.arange(15))).embedding, dim=1)
    for c in range(5):
        want = F.normalize(embedding[3 * c : 3 * c + 3].mean(0), dim=0)
        assert torch.allclose(proxies.levels[0].proxies[c], want, atol=1e-5)
    assert torch.equal(proxies.levels[0].proxies[5], untouched[5])  # no training listings: as it was
