"""The evidence channels and the combiners fitted on planted errors (ml_worker.evidence), on a synthetic
catalogue whose image descriptors carry the product type and the colour, so that what a listing's image
says can contradict what its title, attributes and category say."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load, save

from ml_worker.catalogue import Listing, variant_keys, with_variant_attributes
from ml_worker.evidence import (
    DUPLICATE_CHANNELS,
    WRONG_VARIANT_CHANNELS,
    CatalogueView,
    Combiner,
    Relisting,
    Scorer,
    describe_duplicate,
    describe_wrong_variant,
    duplicate_channels,
    fit_scorer,
    normalise_value,
    sibling_evidence,
    wrong_variant_channels,
)
from ml_worker.folds import FamilyFolds
from ml_worker.lexical import TitleIdf

TYPES = ["dress", "shirt", "sock", "boot", "scarf", "coat", "hat", "belt"]
COLOURS = ["black", "white", "red", "blue"]


def synthetic(families_per_type: int = 8, seed: int = 0, swap: bool = True):
    """Families of one product type in two colours each (the two-member families that sibling agreement
    cannot decide); image = type direction + colour direction + noise; text = the title (shared by the
    family) + its colour. With `swap`, the first family's second listing shows another type's image."""
    rng = np.random.default_rng(seed)
    d, t = 48, 24
    type_vec = {k: rng.normal(size=d) for k in TYPES}
    colour_vec = {c: rng.normal(size=d) for c in COLOURS}
    type_text = {k: rng.normal(size=t) for k in TYPES}
    colour_text = {c: rng.normal(size=t) for c in COLOURS}
    rows = []
    for kind in TYPES:
        for f in range(families_per_type):
            colours = rng.choice(COLOURS, size=2, replace=False)
            style = rng.normal(size=d) * 0.6
            for c in colours:
                rows.append(
                    {
                        "sku": f"{kind}-{f}-{c}",
                        "family": f"{kind}-{f}",
                        "title": f"{kind.title()} model {f}",
                        "category": ("Clothes", kind),
                        "attributes": {"colour": c, "material": "cotton"},
                        "image": type_vec[kind] + 0.8 * colour_vec[c] + style + 0.3 * rng.normal(size=d),
                        "text": type_text[kind] + 0.5 * colour_text[c] + 0.2 * rng.normal(size=t),
                    }
                )
    if swap:  # the wrong image: the listing keeps its title and colour, shows a red boot
        rows[1]["image"] = type_vec["boot"] + 0.8 * colour_vec["red"] + 0.3 * rng.normal(size=d)

    def unit(v):
        return v / np.linalg.norm(v)

    view = CatalogueView(
        skus=[r["sku"] for r in rows],
        families=[r["family"] for r in rows],
        categories=[r["category"] for r in rows],
        attributes=[r["attributes"] for r in rows],
        titles=[r["title"] for r in rows],
        descriptions=[f"A {r['family']} in soft cotton." for r in rows],
        image=np.stack([unit(r["image"]) for r in rows]),
        text=np.stack([unit(r["text"]) for r in rows]),
    )
    return view


def cosine_agreement(view: CatalogueView):
    """A stand-in pair head: P(same family) from the image and text cosines (the zero-shot formula)."""

    def agreement(listing_rows, sibling_rows, image_rows=None):
        image_rows = listing_rows if image_rows is None else image_rows
        out = []
        for i, img, sib in zip(listing_rows, image_rows, sibling_rows, strict=True):
            sims = (view.image[sib] @ view.image[img] + view.text[sib] @ view.text[i]) / 2
            out.append((1 / (1 + np.exp(-10 * (sims - 0.5)))).tolist())
        return out

    return agreement


def fit_on_nearest(view: CatalogueView, relistings: list[Relisting], *, seed: int, plants: int) -> Scorer:
    """fit_scorer with each listing's 5 nearest (image + text cosine) as duplicate candidates."""
    n = len(view)
    sims = view.image @ view.image.T + view.text @ view.text.T
    np.fill_diagonal(sims, -9)
    ii, jj = np.repeat(np.arange(n), 5), np.argsort(-sims, axis=1)[:, :5].ravel()
    p = 1 / (1 + np.exp(-10 * (sims[ii, jj] / 2 - 0.9)))
    return fit_scorer(
        view,
        folds=FamilyFolds(2),
        family_agreement=cosine_agreement(view),
        candidate_pairs=(ii, jj, p),
        relistings=relistings,
        idf=TitleIdf(view.titles),
        seed=seed,
        plants=plants,
    )


def fitted(view: CatalogueView, seed: int = 0) -> Scorer:
    rng = np.random.default_rng(seed)
    relistings = [
        Relisting(int(r), view.titles[r].upper(), 0.97 + 0.02 * rng.random(), 0.99, 0.9)
        for r in rng.choice(len(view), size=60, replace=False)
    ]
    return fit_on_nearest(view, relistings, seed=seed, plants=400)


def wrong_variant_scores(view: CatalogueView, scorer: Scorer) -> dict[int, float]:
    rows = list(range(len(view)))
    siblings = [[j for j in view.members[view.families[i]] if j != i] for i in rows]
    own = scorer.heads.evidence(view, rows)
    x = wrong_variant_channels(
        view, rows, siblings, cosine_agreement(view)(rows, siblings), own,
        sibling_own=sibling_evidence(view, scorer.heads, siblings),
    )  # fmt: skip
    return dict(zip(rows, scorer.wrong_variant.probability(x).tolist(), strict=True)), x


@pytest.fixture(scope="module")
def catalogue():
    view = synthetic()
    return view, fitted(view)


def test_a_two_member_family_with_a_swapped_image_is_decided_by_the_listing_s_own_evidence(catalogue):
    view, scorer = catalogue
    scores, x = wrong_variant_scores(view, scorer)
    # sibling agreement alone cannot tell the two apart: each is as unlike the other
    pair = WRONG_VARIANT_CHANNELS.index("image_unlike_siblings")
    assert x[0, pair] == pytest.approx(x[1, pair])
    assert scores[1] > scores[0], "the listing whose image is not its own scores above its sibling"
    own = WRONG_VARIANT_CHANNELS.index("category_surprise_relative")
    assert x[1, own] > 0 > x[0, own], "its image fits its category less well than its sibling's does"
    assert scores[1] == max(scores.values()), "and above every correct listing"
    # in words, with what the image looks like against what the listing says
    lines = describe_wrong_variant(
        x[1], scorer.wrong_variant, scorer.heads.evidence(view, [1])["worst"][0], 1
    )
    assert any("Boot" in line["text"] or "boot" in line["text"] for line in lines), lines


def test_combiners_output_probabilities_and_are_refitted_per_catalogue(catalogue):
    view, scorer = catalogue
    scores, x = wrong_variant_scores(view, scorer)
    values = np.array(list(scores.values()))
    assert ((values >= 0) & (values <= 1)).all()
    assert np.median(values) < 0.2, "a catalogue of mostly right listings: most scores are low"
    summary = scorer.wrong_variant.summary["wrong_image"]
    assert summary["planted"] > 50 and summary["reliability"], "fitted on plants, with its reliability table"
    assert all(0 <= b["predicted"] <= 1 and 0 <= b["observed"] <= 1 for b in summary["reliability"])

    other = fitted(synthetic(seed=1, swap=False), seed=1)  # another catalogue: other coefficients
    assert not np.allclose(
        other.wrong_variant.kinds["wrong_image"].coef, scorer.wrong_variant.kinds["wrong_image"].coef
    )

    # the payload a score job stores round-trips (arrays as safetensors, the rest as JSON)
    arrays, meta = scorer.to_payload()
    back = Scorer.from_payload(load(save(arrays)), meta)
    np.testing.assert_allclose(back.wrong_variant.probability(x), scorer.wrong_variant.probability(x))
    assert back.heads.folds == scorer.heads.folds == FamilyFolds(2)
    assert back.heads.evidence(view, [1])["attribute"] == pytest.approx(
        scorer.heads.evidence(view, [1])["attribute"]
    )
    # a scorer stored before the duplicate channel "twin_looks_closer" existed reads today's channels
    old = scorer.duplicate.kinds["same_photo"].to_dict()
    at = DUPLICATE_CHANNELS.index("twin_looks_closer")
    for key in ("channels", "mean", "scale", "coef"):
        old[key] = [v for k, v in enumerate(old[key]) if k != at]
    stored = Scorer.from_payload(load(save(arrays)), {**meta, "duplicate": old})
    pairs = duplicate_channels(view, [0, 2], [1, 3], np.array([0.9, 0.2]), TitleIdf(view.titles))
    pairs[:, at] = 0.7
    np.testing.assert_allclose(
        stored.duplicate.probability(pairs), Combiner.from_dict(old).probability(np.delete(pairs, at, axis=1))
    )
    old["channels"][0] = "a channel no longer computed"
    with pytest.raises(ValueError, match="no longer computed"):
        Scorer.from_payload(load(save(arrays)), {**meta, "duplicate": old})


def test_presumed_clean_rows_that_look_like_errors_are_left_out_of_the_final_fit():
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 1, size=(500, 2))
    planted = rng.normal(3, 1, size=(200, 2))
    hidden = rng.normal(3, 1, size=(10, 2))  # real errors among the catalogue's listings, labelled clean
    x = np.vstack([clean, hidden, planted])
    y = np.r_[np.zeros(510), np.ones(200)].astype(bool)
    combiner = Combiner.fit(x, y, ("a", "b"), prior=0.02)
    assert combiner.summary["left_out"] == round(0.02 * 510)
    naive = Combiner.fit(x, y, ("a", "b"), prior=0.02, suspect_share=0.0)
    assert combiner.probability(np.array([[3.0, 3.0]]))[0] > naive.probability(np.array([[3.0, 3.0]]))[0]


def test_a_duplicate_with_another_colour_scores_below_the_same_pair_with_equal_colours(catalogue):
    view, scorer = catalogue
    a = 2  # a listing, and a re-listing of it that is the same in everything but (maybe) its colour
    twin = CatalogueView(
        skus=[view.skus[a], "twin", "twin-other-colour"],
        families=[view.families[a]] * 3,
        categories=[view.categories[a]] * 3,
        attributes=[
            view.attributes[a],
            dict(view.attributes[a]),
            {**view.attributes[a], "colour": "Other" if view.attributes[a]["colour"] != "Other" else "X"},
        ],
        titles=[view.titles[a]] * 3,
        descriptions=[view.descriptions[a]] * 3,
        image=view.image[[a, a, a]],
        text=view.text[[a, a, a]],
    )
    x = duplicate_channels(twin, [0, 0], [1, 2], np.array([0.9, 0.9]), TitleIdf(view.titles))
    p_same, p_other = scorer.duplicate.probability(x)
    assert p_other < p_same
    differ = DUPLICATE_CHANNELS.index("attributes_differ")
    assert (x[0, differ], x[1, differ]) == (0, 1)
    assert any("differ" in line["text"] for line in describe_duplicate(x[1], scorer.duplicate))


def test_a_second_page_with_a_photo_of_its_own_is_found_by_its_words(catalogue):
    view, scorer = catalogue
    a = 2
    sibling = next(j for j in view.members[view.families[a]] if j != a)
    other = next(j for j in range(len(view)) if view.families[j] != view.families[a])
    # a copy of listing `a` (its title re-typed, its description and attributes) showing another photo,
    # and its sibling (another colour) showing that same photo
    pages = CatalogueView(
        skus=[view.skus[a], "copy", view.skus[sibling]],
        families=[view.families[a]] * 3,
        categories=[view.categories[a]] * 3,
        attributes=[view.attributes[a], dict(view.attributes[a]), view.attributes[sibling]],
        titles=[view.titles[a], view.titles[a].upper(), view.titles[sibling]],
        descriptions=[view.descriptions[a]] * 3,
        image=view.image[[a, other, other]],
        text=view.text[[a, a, sibling]],
    )
    x = duplicate_channels(pages, [0, 0], [1, 2], np.array([0.1, 0.1]), TitleIdf(view.titles))
    p_copy, p_sibling = scorer.duplicate.probability(x)
    assert p_copy > 0.5 > 0.1 > p_sibling, (p_copy, p_sibling)
    assert scorer.duplicate.kinds["same_photo"].probability(x[:1])[0] < 0.1, "the photos alone say no"
    lines = describe_duplicate(x[0], scorer.duplicate)
    assert lines[0]["text"] == "the words match, the photos differ"
    # its bar is the words' push as a whole: no shorter than the parts listed under it
    assert lines[0]["strength"] >= max(line["strength"] for line in lines[1:])


def test_attribute_values_compare_normalised():
    assert normalise_value(" Dark Blue ") == normalise_value("dark-blue") == "darkblue"
    assert normalise_value("1 L") == normalise_value("1l")


def test_variant_attributes_are_those_that_differ_within_the_family():
    listings = [
        Listing("a", "Tee", "F", (), {"colour": "Red", "fabric": "cotton", "price": "5"}, None),
        Listing("b", "Tee", "F", (), {"colour": "Blue", "fabric": "cotton", "price": "6"}, None),
        Listing("c", "Mug", "G", (), {"colour": "Red"}, None),
    ]
    assert variant_keys(listings) == {"F": ["colour"], "G": []}  # price describes the offer, not the variant
    with_variant_attributes(listings)
    assert listings[0].text == "Tee | colour: Red" and listings[1].text == "Tee | colour: Blue"
    assert listings[2].text == "Mug", "a one-listing family has nothing to tell apart"
    with_variant_attributes(listings, keys=["fabric"])
    assert listings[0].text == "Tee | fabric: cotton"


def test_a_copy_is_the_duplicate_of_the_page_it_copies_not_of_that_pages_identically_worded_siblings():
    """Most families tell their members apart by colour; some only by the photo (one title, description
    and attributes for every print of a tee). A second page copying one print, in a family of its own,
    matches all of that family's members word for word; the photo says which one it copies."""
    rng = np.random.default_rng(3)
    d = 48

    def unit(v):
        return v / np.linalg.norm(v)

    rows = []
    for f in range(32):
        kind = TYPES[f % len(TYPES)]
        base = rng.normal(size=d)
        prints = f % 4 == 0  # every fourth family: three prints worded alike
        for m, colour in enumerate(["white"] * 3 if prints else COLOURS[:3]):
            rows.append((f"{kind}-{f}-{m}", f"F{f}", kind, colour, unit(base + 0.9 * rng.normal(size=d))))
    text = {f"F{f}": unit(rng.normal(size=24)) for f in range(32)}

    def view_of(rows):
        return CatalogueView(
            skus=[r[0] for r in rows],
            families=[r[1] for r in rows],
            categories=[("Clothes", r[2]) for r in rows],
            attributes=[{"colour": r[3]} for r in rows],
            titles=[f"{r[2].title()} tee {r[1].removeprefix('copy-')}" for r in rows],
            descriptions=[f"A {r[2]} in soft cotton." for r in rows],
            image=np.stack([r[4] for r in rows]),
            text=np.stack([text[r[1].removeprefix("copy-")] for r in rows]),
        )

    view = view_of(rows)
    relistings = []
    for r in rng.choice(len(view), size=60, replace=False).tolist():
        copy = unit(view.image[r] + 0.05 * rng.normal(size=d))
        siblings = [
            (j, float(view.image[j] @ copy), 1.0, 0.9) for j in view.members[view.families[r]] if j != r
        ]
        relistings.append(
            Relisting(r, view.titles[r].upper(), float(view.image[r] @ copy), 1.0, 0.9, siblings)
        )
    scorer = fit_on_nearest(view, relistings, seed=0, plants=200)
    # a new page copying the first print of family F0, as a family of its own
    original, twin = view.members["F0"][:2]
    copy = (
        "copy",
        "copy-F0",
        rows[original][2],
        "white",
        unit(view.image[original] + 0.05 * rng.normal(size=d)),
    )
    pages = view_of([rows[original], rows[twin], copy])
    pages.titles[2] = pages.titles[0].upper()
    x = duplicate_channels(pages, [0, 1], [2, 2], np.array([0.9, 0.9]), TitleIdf(view.titles))
    p_original, p_twin = scorer.duplicate.probability(x)
    assert p_original > 0.5 > p_twin, (p_original, p_twin)
    closer = x[:, DUPLICATE_CHANNELS.index("twin_looks_closer")]
    assert closer[0] == 0 < closer[1], "the original's twin sees a page that looks like the original"
