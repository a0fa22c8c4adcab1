"""Lexical title similarity for image-less listings (ml_worker.lexical) and where it enters scoring."""

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from ml_worker.catalogue import Listing
from ml_worker.config import MapsConfig
from ml_worker.features import extract_features
from ml_worker.lexical import (
    NUMBER_PENALTY,
    PRICE_CAP,
    PRICE_WEIGHT,
    TitleIdf,
    disagreement,
    numbers,
    price_of,
)
from ml_worker.scoring import encode_all, score_listings
from ml_worker.zero_shot import ZeroShotModel, duplicate_probability
from tests.ml_worker.conftest import random_inputs

FILLER = ["studio", "express", "basic", "home", "premium", "lite", "starter", "plus", "school", "family"]
FILLER += ["travel", "kids", "music", "garden", "office", "print", "web", "design", "video", "audio"]
QUERY = "acme photo editor deluxe 2007 kx-4410"
PARTNER = "photo deluxe 2007 (kx-4410)"  # the same product, listed elsewhere in other words
LOOK_ALIKE = "acme photo editor deluxe 2006 kx-3300"  # worded like the query, another product
TITLES = [f"acme photo editor {w}" for w in FILLER] + [QUERY, PARTNER, LOOK_ALIKE]


def test_tfidf_cosine_is_scikit_learns():
    titles = [*TITLES, "", "Photo photo PHOTO editor"]
    idf = TitleIdf(titles)
    reference = TfidfVectorizer(sublinear_tf=True).fit_transform(titles)
    ii, jj = np.triu_indices(len(titles), 1)
    ours = idf.pair_similarity(titles, ii, jj).numpy()
    theirs = np.asarray((reference @ reference.T).todense())[ii, jj]
    assert np.allclose(ours, theirs, atol=1e-6)


def test_rare_shared_words_count_more_than_common_ones():
    idf = TitleIdf(TITLES)
    q, partner, look_alike = len(FILLER), len(FILLER) + 1, len(FILLER) + 2
    sims = idf.pair_similarity(TITLES, [q, q, q], [q, partner, look_alike])
    assert sims[0] == pytest.approx(1.0)
    assert sims[1] > sims[2]  # "2007", "4410" (rare) beat "acme photo editor" (everywhere)
    assert idf.pair_similarity(["", "x y"], [0], [1]).item() == 0.0
    assert idf.pair_similarity(["zzz qqq", "zzz qqq"], [0], [1]).item() == pytest.approx(1.0)  # unseen words


# words tie (one unseen word each): only the price tells the re-listing from the cheaper upgrade
PRICED = ["zento backup suite pro", "zento backup suite pro boxed", "zento backup suite pro upgrade"]
PRICES = [49.99, "$52.00", "19.99"]


def test_numbers_and_prices_are_read_leniently():
    assert numbers("Office v 8.0 (5-pack) 2007") == {"8", "5", "2007"}
    assert numbers("v8 / 8.50 / 8.05") == {"8", "8.5", "8.05"}
    assert numbers("no digits here") == frozenset()
    for value, expected in [
        ("599.99", 599.99),
        ("$1,299", 1299.0),
        (" 12 ", 12.0),
        (12, 12.0),
        (0.5, 0.5),
    ]:
        assert price_of({"price": value}) == expected
    for value in [None, "", "free", "0", -3, float("nan"), float("inf"), True, "12 usd", [12]]:
        assert price_of({"price": value}) is None, value
    assert price_of({}) is None and price_of(None) is None


def test_disagreement_counts_disjoint_numbers_and_price_ratio():
    assert disagreement("suite 2007", "suite 2007 pro", None, None) == 0.0
    assert disagreement("suite 2007", "suite", None, None) == 0.0  # one side without numbers: no evidence
    assert disagreement("suite 2007", "suite 2008", None, None) == pytest.approx(NUMBER_PENALTY)
    assert disagreement("suite 2007 v8", "suite 2008 v8", None, None) == 0.0  # one shared number
    assert disagreement("a", "b", 10.0, 10.0) == 0.0
    assert disagreement("a", "b", 10.0, 5.0) == pytest.approx(PRICE_WEIGHT * np.log(2))
    assert disagreement("a", "b", 5.0, 10.0) == disagreement("a", "b", 10.0, 5.0)
    assert disagreement("a", "b", 1.0, 1e6) == pytest.approx(PRICE_WEIGHT * PRICE_CAP)
    assert disagreement("a", "b", 1.0, None) == 0.0


def test_pair_evidence_is_the_cosine_less_the_disagreement():
    titles = [*TITLES, *PRICED]
    prices = [None] * len(TITLES) + [price_of({"price": p}) for p in PRICES]
    idf = TitleIdf(titles)
    ii, jj = np.triu_indices(len(titles), 1)
    cosine = idf.pair_similarity(titles, ii, jj)
    evidence = idf.pair_evidence(titles, ii, jj, prices)
    expected = [
        cosine[k] - disagreement(titles[i], titles[j], prices[i], prices[j])
        for k, (i, j) in enumerate(zip(ii, jj, strict=True))
    ]
    assert torch.allclose(evidence, torch.tensor(expected))
    q = len(TITLES)
    words = idf.pair_similarity(titles, [q, q], [q + 1, q + 2])
    assert words[0] == pytest.approx(words[1])
    boxed, upgrade = idf.pair_evidence(titles, [q, q], [q + 1, q + 2], prices)
    assert boxed > upgrade
    assert torch.equal(idf.pair_evidence(titles, [q], [q + 2]), idf.pair_similarity(titles, [q], [q + 2]))


def test_image_less_listings_find_their_match_by_its_words():
    listings = [Listing(f"s{i}", t, f"f{i}", (), {}, None) for i, t in enumerate(TITLES)]
    features = extract_features(listings, MapsConfig(), progress=False, training=False)
    model = ZeroShotModel(MapsConfig())
    outputs = encode_all(model, features)
    families = [x.family for x in listings]
    q = len(FILLER)
    by_embedding = score_listings(model, outputs, families, [q])[q]
    with_words = score_listings(model, outputs, families, [q], titles=TITLES)[q]
    assert TITLES[by_embedding.duplicate_of] == LOOK_ALIKE  # the sentence embedding is fooled
    assert TITLES[with_words.duplicate_of] == PARTNER


@pytest.mark.parametrize("partner", [1, 2])
def test_priced_listings_find_their_match_by_its_price(partner):
    """Either candidate wins, whichever has the query's price (so the words or embedding cannot)."""
    titles = [*TITLES, *PRICED]
    listings = [Listing(f"s{i}", t, f"f{i}", (), {}, None) for i, t in enumerate(titles)]
    priced = [PRICES[0], PRICES[1], PRICES[2]] if partner == 1 else [PRICES[0], PRICES[2], PRICES[1]]
    prices = [None] * len(TITLES) + [price_of({"price": p}) for p in priced]
    features = extract_features(listings, MapsConfig(), progress=False, training=False)
    model = ZeroShotModel(MapsConfig())
    outputs = encode_all(model, features)
    q = len(TITLES)
    scored = score_listings(model, outputs, [x.family for x in listings], [q], titles=titles, prices=prices)
    assert titles[scored[q].duplicate_of] == PRICED[partner]


def test_a_trained_model_leaves_image_less_pairs_to_the_formula():
    from ml_worker.modeling_maps import MapsModel
    from ml_worker.zero_shot import formula_logits

    torch.manual_seed(0)
    model = MapsModel(MapsConfig.tiny()).eval()
    out = encode_all(model, _cache(random_inputs(MapsConfig.tiny(), batch=4)))
    ii, jj = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2])  # row 3 has no image
    lexical = torch.tensor([0.5, 0.5, 0.5])
    p = duplicate_probability(model, out, out, ii, jj, lexical)
    formula = torch.sigmoid(formula_logits(out, out, ii, jj, lexical)[..., 1])
    head = torch.sigmoid(model.pair_logits(out, out, ii, jj)[..., 1])
    assert p[1] == formula[1]
    assert torch.allclose(p[[0, 2]], ((head + formula) / 2)[[0, 2]])
    assert torch.equal(duplicate_probability(model, out, out, ii, jj)[[0, 2]], p[[0, 2]])


def test_pairs_with_two_images_ignore_the_words():
    model = ZeroShotModel(MapsConfig.tiny())
    out = encode_all(model, _cache(random_inputs(MapsConfig.tiny(), batch=4)))
    ii, jj = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2])  # row 3 has no image
    plain = duplicate_probability(model, out, out, ii, jj)
    lexical = duplicate_probability(model, out, out, ii, jj, torch.tensor([1.0, 1.0, 1.0]))
    assert plain[0] == lexical[0] and plain[2] == lexical[2]
    assert lexical[1] > plain[1]


def _cache(x):
    from ml_worker.features import FeatureCache

    return FeatureCache(
        top=x.top,
        mid=x.mid,
        top_aug=x.top,
        mid_aug=x.mid,
        has_image=x.has_image,
        tokens=x.tokens,
        token_mask=x.token_mask,
        adv_tokens=x.tokens,
        adv_mask=x.token_mask,
    )
