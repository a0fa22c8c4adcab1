"""benchmarks/label_value.py: simulated decisions become reviewer pairs as the app makes them."""

import pytest

from benchmarks.label_value import decide, main
from ml_worker.catalogue import Listing


def _listings():
    rows = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B"), ("c1", "C")]
    return [Listing(sku, f"title {sku}", family, (), {}, None) for sku, family in rows]


def test_top_flags_are_decided_by_the_truth():
    listings = _listings()
    truth = {"wrong_variant": [{"sku": "a3"}], "duplicate": [{"sku": "c1", "of": "b1"}]}
    scores = [
        {"sku": "a3", "wrong_variant_score": 0.95, "duplicate_score": 0.2, "duplicate_of": "a1"},
        {"sku": "b2", "wrong_variant_score": 0.80, "duplicate_score": None, "duplicate_of": None},
        {"sku": "c1", "wrong_variant_score": None, "duplicate_score": 0.93, "duplicate_of": "b1"},
        {
            "sku": "a1",
            "wrong_variant_score": 0.60,
            "duplicate_score": 0.91,
            "duplicate_of": "a2",
        },  # 0.6: no flag
        {"sku": "b1", "wrong_variant_score": 0.75, "duplicate_score": 0.50, "duplicate_of": "c1"},
    ]
    pairs, moved, decisions = decide(listings, truth, scores, n=4)
    # served by score: a3 (wv 0.95), c1 (dup 0.93), a1 (dup 0.91), b2 (wv 0.80); b1 (0.75) is fifth
    assert decisions == {
        "wrong_variant confirmed": 1,
        "duplicate confirmed": 1,
        "duplicate rejected": 1,
        "wrong_variant rejected": 1,
    }
    assert moved == {2}  # a3 leaves family A
    got = {
        (int(a), int(b), int(h), bool(t))
        for a, b, h, t in zip(pairs.a, pairs.b, pairs.head, pairs.target, strict=True)
    }
    assert got == {
        (2, 0, 0, False),  # a3 is not of family A: different from a1 and a2
        (2, 1, 0, False),
        (5, 3, 1, True),  # c1 is b1's duplicate
        (0, 1, 1, False),  # a1 is not a duplicate of a2
        (4, 3, 0, True),  # b2 rightly in family B
    }
    assert pairs.counts() == {
        "same_family": 1,
        "different_family": 2,
        "same_product": 1,
        "different_product": 1,
    }


def test_a_scores_file_of_another_catalogue_is_refused():
    scores = [{"sku": "ghost", "wrong_variant_score": 0.9, "duplicate_score": None, "duplicate_of": None}]
    with pytest.raises(SystemExit, match="lacks: ghost"):
        decide(_listings(), {}, scores, n=5)


def test_bad_arguments_are_refused(tmp_path, capsys):
    (tmp_path / "s.jsonl").write_text("")
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path / "s.jsonl"), str(tmp_path), "--configs", "w2,bogus"])
    assert "unknown configuration 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path / "s.jsonl"), str(tmp_path)])
    assert "is not an evaluation directory" in capsys.readouterr().err


def test_a_missing_metrics_script_is_named(tmp_path, capsys):
    for name in ("catalogue.jsonl", "truth.json", "s.jsonl"):
        (tmp_path / name).write_text("")
    with pytest.raises(SystemExit):
        main(
            [str(tmp_path), str(tmp_path / "s.jsonl"), str(tmp_path), "--metrics", str(tmp_path / "nope.py")]
        )
    assert "nope.py not found" in capsys.readouterr().err


def test_the_reviewed_listings_are_the_top_flags_and_their_candidates():
    from benchmarks.sibling_flags import reviewed_listings

    scores = [
        {"sku": "a", "wrong_variant_score": 0.95, "duplicate_score": None, "duplicate_of": None},
        {"sku": "b", "wrong_variant_score": 0.2, "duplicate_score": 0.93, "duplicate_of": "c"},
        {"sku": "d", "wrong_variant_score": 0.8, "duplicate_score": 0.5, "duplicate_of": "a"},
        {"sku": "e", "wrong_variant_score": 0.6, "duplicate_score": 0.91, "duplicate_of": "f"},
    ]
    assert reviewed_listings(scores, 2) == {"a", "b", "c"}  # a (0.95), then the b-c pair (0.93)
    assert reviewed_listings(scores, 4) == {"a", "b", "c", "d", "e", "f"}
