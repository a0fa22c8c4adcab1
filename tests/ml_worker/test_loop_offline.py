"""benchmarks/loop_offline.py: the simulated reviewer serves the queue as the app does, round after
round, and its decisions become the app's reviewer pairs."""

import json

import pytest

from benchmarks.loop_offline import Catalogue, Reviewer, main
from ml_worker.scoring import ListingScore

ROWS = [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B"), ("c1", "C")]


@pytest.fixture
def reviewer(tmp_path):
    lines = [json.dumps({"sku": sku, "title": f"title {sku}", "family": family}) for sku, family in ROWS]
    (tmp_path / "catalogue.jsonl").write_text("\n".join(lines) + "\n")
    truth = {"wrong_variant": [{"sku": "a3"}], "duplicate": [{"sku": "c1", "of": "b1"}]}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    return Reviewer(Catalogue(tmp_path, "cpu", None), wrong_variant_threshold=0.7, duplicate_threshold=0.9)


def scores(**by_sku):
    rows = {sku: i for i, (sku, _) in enumerate(ROWS)}
    return {
        rows[sku]: ListingScore(wv, dup, rows[of] if of else None) for sku, (wv, dup, of) in by_sku.items()
    }


def pair_set(pairs):
    return {
        (int(a), int(b), int(h), bool(t))
        for a, b, h, t in zip(pairs.a, pairs.b, pairs.head, pairs.target, strict=True)
    }


def test_rounds_serve_the_open_flags_by_score_and_never_a_decided_one_again(reviewer):
    first = scores(
        a3=(0.95, 0.2, "a1"),
        c1=(None, 0.93, "b1"),
        b1=(0.75, 0.92, "c1"),  # the other side of c1's pair: decided with it
        a1=(0.6, 0.91, "a2"),  # 0.6: no wrong-variant flag
    )
    assert reviewer.review(first, 3) == {
        "wrong_variant confirmed": 1,
        "duplicate confirmed": 1,
        "duplicate rejected": 1,
    }
    assert [(k, i) for k, i, _, _ in reviewer.decisions] == [
        ("wrong_variant", 2),
        ("duplicate", 5),
        ("duplicate", 0),
    ]
    assert reviewer.moved_out == {2}
    assert reviewer.reviewed_skus == {"a3", "c1", "b1", "a1", "a2"}
    # the next round's scores: decided flags stay decided, b1's wrong-variant flag is served now
    second = scores(a3=(0.99, None, None), c1=(None, 0.99, "b1"), b1=(0.75, 0.5, "c1"), b2=(0.71, None, None))
    assert reviewer.review(second, 5) == {"wrong_variant rejected": 2}
    assert pair_set(reviewer.pairs()) == {
        (2, 0, 0, False),  # a3 is not of family A
        (2, 1, 0, False),
        (5, 3, 1, True),  # c1 is b1's duplicate
        (0, 1, 1, False),  # a1 is not a2's
        (3, 4, 0, True),  # b1 and b2 rightly in family B
        (4, 3, 0, True),
    }


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path)])
    assert "is not an evaluation directory" in capsys.readouterr().err
    for name in ("catalogue.jsonl", "truth.json"):
        (tmp_path / name).write_text("")
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path), "--per-round", "0"])
    assert "--per-round" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path), "--end-to-end", "--tune-backbone-top"])
    assert "drop --tune-backbone-top" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path), "--metrics", str(tmp_path / "nope.py")])
    assert "nope.py not found" in capsys.readouterr().err
