"""The pair head's wrong-variant evidence (ml_worker.calibration)."""

import numpy as np
import pytest
import torch

from ml_worker.calibration import EVIDENCE, family_agreement, wrong_variant_evidence
from ml_worker.modeling_maps import MapsModel
from ml_worker.scoring import encode_all
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
