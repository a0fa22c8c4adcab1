"""`python -m ml_worker.evaluate` end to end on a small generated catalogue with the real backbones."""

import json

import pytest
from PIL import Image, ImageDraw

from ml_worker.evaluate import main

COLOURS = {"Red": (200, 30, 30), "Blue": (30, 30, 200), "Green": (30, 160, 30)}


@pytest.fixture
def catalogue(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for f, shape in enumerate(["circle", "square", "bar"]):
        for colour, rgb in COLOURS.items():
            sku = f"{shape}-{colour}"
            image = Image.new("RGB", (96, 96), "white")
            draw = ImageDraw.Draw(image)
            {"circle": draw.ellipse, "square": draw.rectangle, "bar": draw.rectangle}[shape](
                (20, 20, 76, 76) if shape != "bar" else (40, 10, 56, 86), fill=rgb
            )
            image.save(tmp_path / "images" / f"{sku}.png")
            rows.append(
                {
                    "sku": sku,
                    "title": f"{shape.title()} toy",
                    "family": str(f),
                    "category": ["Toys", shape],
                    "attributes": {"colour": colour},
                    "image": f"images/{sku}.png",
                }
            )
    rows.append(
        {"sku": "text-only", "title": "Circle toy", "family": "solo", "category": ["Toys"], "image": None}
    )
    (tmp_path / "catalogue.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_score_save_and_rescore_with_the_checkpoint(catalogue, tmp_path):
    out = tmp_path / "scores.jsonl"
    assert (
        main(
            [
                str(catalogue),
                "--out",
                str(out),
                "--train",
                "--steps",
                "3",
                "--folds",
                "2",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--save-model",
                str(tmp_path / "model"),
            ]
        )
        == 0
    )
    lines = read(out)
    assert len(lines) == 10
    assert set(lines[0]) == {
        "sku",
        "family",
        "wrong_variant_score",
        "duplicate_score",
        "duplicate_of",
        "model_version",
    }
    solo = next(x for x in lines if x["sku"] == "text-only")
    assert solo["wrong_variant_score"] is None and solo["duplicate_score"] is not None
    assert all(x["wrong_variant_score"] is not None for x in lines if x["sku"] != "text-only")
    cached = sorted(f.name for f in (tmp_path / "cache").iterdir())
    assert len(cached) == 2, "features are cached for the next run, with the index scoring reads rows by"
    assert cached[0].endswith(".index.json") and cached[1] == cached[0].replace(".index.json", ".safetensors")

    again = tmp_path / "again.jsonl"
    assert (
        main(
            [
                str(catalogue),
                "--out",
                str(again),
                "--model",
                str(tmp_path / "model"),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert [x["sku"] for x in read(again)] == [x["sku"] for x in lines]


def test_refuses_to_run_without_a_model_or_training(catalogue, tmp_path):
    with pytest.raises(SystemExit):
        main([str(catalogue), "--out", str(tmp_path / "x.jsonl")])


def test_zero_shot_and_no_cross_fitting(catalogue, tmp_path):
    out = tmp_path / "zs.jsonl"
    assert main([str(catalogue), "--out", str(out), "--zero-shot", "--cache-dir", str(tmp_path / "c")]) == 0
    lines = read(out)
    assert {x["model_version"] for x in lines} == {"zero-shot"}
    assert len(lines) == 10
    out = tmp_path / "f1.jsonl"
    args = [str(catalogue), "--out", str(out), "--train", "--steps", "2", "--folds", "1"]
    assert main([*args, "--cache-dir", str(tmp_path / "c")]) == 0
    assert all(x["wrong_variant_score"] is not None for x in read(out) if x["sku"] != "text-only")
