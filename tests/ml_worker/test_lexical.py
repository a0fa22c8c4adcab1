"""Lexical title similarity for image-less listings (ml_worker.lexical) and where it enters scoring."""

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from ml_worker.catalogue import Listing
from ml_worker.config import MapsConfig
from ml_worker.features import extract_features
from ml_worker.lexical import TitleIdf
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
