"""catalogue_import and the import_catalogue command, against the real PostgreSQL."""

import csv
import io
import json
import random
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from catalog_review.models import Category, ImageStatus, Job, Product, VariationFamily
from catalog_review.services.catalogue_file import CatalogueFileError
from catalog_review.services.catalogue_import import catalogue_import
from tests.conftest import jpeg_bytes, png_bytes

pytestmark = pytest.mark.django_db


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def good_rows() -> list[dict]:
    return [
        {
            "sku": "A1",
            "title": "Red dress",
            "family": "A",
            "category": ["Women", "Dresses", "Maxi"],
            "attributes": {"colour": "Red"},
            "image": "images/a1.jpg",
            "description": "Long.",
        },
        {
            "sku": "A2",
            "title": "Blue dress",
            "family": "A",
            "category": ["Women", "Dresses", "Maxi"],
            "attributes": {"colour": "Blue"},
            "image": "images/a2.png",
        },
        {
            "sku": "B1",
            "title": "Umbrella",
            "family": "B",
            "category": ["Women", "Accessories"],
            "image": None,
        },
    ]


@pytest.fixture
def catalogue(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a1.jpg").write_bytes(jpeg_bytes(colour=(200, 0, 0)))
    (tmp_path / "images" / "a2.png").write_bytes(png_bytes())
    return write_jsonl(tmp_path / "catalogue.jsonl", good_rows())


def snapshot():
    return sorted(
        Product.objects.values_list(
            "sku",
            "title",
            "description",
            "attributes",
            "category__path",
            "family__code",
            "image",
            "image_sha256",
            "image_status",
            "updated_at",
        )
    )


def test_good_file_builds_families_categories_and_stores_images(catalogue, media_root):
    report = catalogue_import(path=catalogue)
    assert (report.rows, report.created, report.errors, report.warnings) == (3, 3, [], [])
    assert VariationFamily.objects.count() == 2
    assert list(Category.objects.values_list("path", "depth")) == [
        ("Women", 1),
        ("Women > Accessories", 2),
        ("Women > Dresses", 2),
        ("Women > Dresses > Maxi", 3),
    ]
    maxi = Category.objects.get(path="Women > Dresses > Maxi")
    assert maxi.parent.path == "Women > Dresses"
    a1 = Product.objects.get(sku="A1")
    assert a1.image_status == ImageStatus.OK and (a1.image_width, a1.image_height) == (64, 48)
    assert a1.image == f"images/{a1.image_sha256[:2]}/{a1.image_sha256}.jpg"
    assert (media_root / a1.image).read_bytes() == (catalogue.parent / "images" / "a1.jpg").read_bytes()
    assert Product.objects.get(sku="B1").image_status == ImageStatus.NONE
    job = Job.objects.get(pk=report.job_id)
    assert job.kind == Job.Kind.IMPORT and job.status == Job.Status.SUCCEEDED and job.counts["created"] == 3


def test_reimport_changes_nothing(catalogue):
    catalogue_import(path=catalogue)
    before = snapshot()
    report = catalogue_import(path=catalogue)
    assert (report.created, report.updated, report.unchanged) == (0, 0, 3)
    assert snapshot() == before


def test_reimport_updates_changed_rows_only(catalogue):
    catalogue_import(path=catalogue)
    before = dict((row[0], row) for row in snapshot())
    rows = good_rows()
    rows[1]["title"] = "Navy dress"
    write_jsonl(catalogue, rows)
    report = catalogue_import(path=catalogue)
    assert (report.created, report.updated, report.unchanged) == (0, 1, 2)
    after = dict((row[0], row) for row in snapshot())
    assert after["A2"][1] == "Navy dress" and after["A2"][-1] > before["A2"][-1]
    assert after["A1"] == before["A1"] and after["B1"] == before["B1"]


def test_identical_images_are_stored_once(tmp_path):
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes())
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"sku": "1", "title": "a", "image": "x.jpg"},
            {"sku": "2", "title": "b", "image": str(tmp_path / "x.jpg")},
        ],
    )
    catalogue_import(path=path)
    assert len(set(Product.objects.values_list("image", flat=True))) == 1


def bad_image_catalogue(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    good = jpeg_bytes(size=(128, 128))
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "text.jpg").write_bytes(b"this is not an image at all")
    (images / "empty.jpg").write_bytes(b"")
    noise = Image.frombytes("RGB", (300, 300), random.Random(1).randbytes(300 * 300 * 3))
    noise.save(images / "huge.jpg", "JPEG", quality=100)  # noise does not compress: well over 60 kB
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, "PNG")  # 64 Mpx that compress to a few kB
    (images / "bomb.png").write_bytes(bomb.getvalue())
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes())  # a real image, but outside the images root
    (images / "dir.jpg").mkdir()
    rows = [
        {"sku": "T", "title": "truncated", "image": "truncated.jpg"},
        {"sku": "N", "title": "not an image", "image": "text.jpg"},
        {"sku": "E", "title": "empty", "image": "empty.jpg"},
        {"sku": "H", "title": "huge file", "image": "huge.jpg"},
        {"sku": "D", "title": "bomb", "image": "bomb.png"},
        {"sku": "P", "title": "traversal", "image": "../secret.jpg"},
        {"sku": "Q", "title": "absolute outside", "image": str(tmp_path / "secret.jpg")},
        {"sku": "M", "title": "missing", "image": "nope.jpg"},
        {"sku": "R", "title": "a directory", "image": "dir.jpg"},
    ]
    return write_jsonl(tmp_path / "c.jsonl", rows)


def test_bad_images_keep_the_listing_with_a_status_and_a_warning(tmp_path, settings, media_root):
    settings.IMAGE_MAX_BYTES = 60_000
    settings.IMAGE_MAX_PIXELS = 1_000_000
    path = bad_image_catalogue(tmp_path)
    stored_before = set(media_root.rglob("*"))
    report = catalogue_import(path=path, images_root=tmp_path / "images")
    assert report.created == 9 and report.errors == []
    status = dict(Product.objects.values_list("sku", "image_status"))
    assert status == {
        "T": "invalid",
        "N": "invalid",
        "E": "invalid",
        "H": "too_large",
        "D": "too_large",
        "P": "invalid",
        "Q": "invalid",
        "M": "missing",
        "R": "invalid",
    }
    reasons = {w.sku: w.reason for w in report.warnings}
    assert "truncated" in reasons["T"]
    assert reasons["N"] == "file is not an image Pillow can read"
    assert reasons["E"] == "image file is empty"
    assert "over the 60,000-byte limit" in reasons["H"]
    assert "decompression bomb" in reasons["D"]
    assert "outside the images root" in reasons["P"] and "outside the images root" in reasons["Q"]
    assert reasons["M"] == "image file 'nope.jpg' not found"
    assert "not a regular file" in reasons["R"]
    assert all(w.field == "image" for w in report.warnings)
    assert set(media_root.rglob("*")) == stored_before, "a rejected image was stored"


def test_bad_image_on_reimport_keeps_the_good_stored_image(catalogue):
    catalogue_import(path=catalogue)
    stored = Product.objects.get(sku="A1").image
    (catalogue.parent / "images" / "a1.jpg").write_bytes(b"corrupt now")
    report = catalogue_import(path=catalogue)
    a1 = Product.objects.get(sku="A1")
    assert a1.image == stored and a1.image_status == ImageStatus.OK
    assert "kept the image already stored" in report.warnings[0].reason


def test_bad_rows_are_reported_and_skipped_good_rows_kept(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"sku": "ok1", "title": "fine"},
            "{broken json",
            {"title": "no sku"},
            {"sku": "nt"},
            {"sku": "wt", "title": ["a list"]},
            {"sku": "ok1", "title": "again"},
            '"just a string"',
            {"sku": "ok2", "title": "<script>alert(1)</script> Ünïcødé ✓"},
        ],
    )
    report = catalogue_import(path=path)
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["ok1", "ok2"]
    assert Product.objects.get(sku="ok1").title == "fine"
    assert Product.objects.get(sku="ok2").title == "<script>alert(1)</script> Ünïcødé ✓"
    assert [(e.row, e.field) for e in report.errors] == [
        (2, ""),
        (3, "sku"),
        (4, "title"),
        (5, "title"),
        (6, "sku"),
        (7, ""),
    ]
    assert "duplicate sku 'ok1': first seen on row 1" in report.errors[4].reason
    assert report.skipped == 6 and report.created == 2


def test_csv_and_jsonl_give_the_same_catalogue(catalogue, tmp_path):
    catalogue_import(path=catalogue)
    from_jsonl = snapshot()
    Product.objects.all().delete()
    csv_path = tmp_path / "catalogue.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(
            fh, ["sku", "title", "description", "family", "category", "attr_colour", "image"]
        )
        writer.writeheader()
        for row in good_rows():
            writer.writerow(
                {
                    "sku": row["sku"],
                    "title": row["title"],
                    "description": row.get("description", ""),
                    "family": row["family"],
                    "category": " > ".join(row["category"]),
                    "attr_colour": row.get("attributes", {}).get("colour", ""),
                    "image": row["image"] or "",
                }
            )
    catalogue_import(path=csv_path)
    drop_time = [row[:-1] for row in snapshot()]
    assert drop_time == [row[:-1] for row in from_jsonl]


def test_unreadable_file_raises_and_records_nothing(tmp_path):
    with pytest.raises(CatalogueFileError):
        catalogue_import(path=tmp_path / "missing.jsonl")
    assert not Job.objects.exists()


def test_command_prints_summary_and_row_errors(tmp_path, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", [{"sku": "a", "title": "A", "image": "gone.jpg"}, "{x"])
    report_file = tmp_path / "errors.jsonl"
    call_command("import_catalogue", str(path), "--no-progress", "--errors-report", str(report_file))
    out, err = capsys.readouterr()
    assert "Read 2 rows: 1 created" in out and "1 skipped" in out and "1 with an unusable image" in out
    assert "row 1 sku a: image: image file 'gone.jpg' not found [image]" in err
    assert "row 2: row: not valid JSON" in err
    lines = [json.loads(line) for line in report_file.read_text().splitlines()]
    assert [(x["row"], x["severity"]) for x in lines] == [(1, "warning"), (2, "error")]
    assert "Traceback" not in err


def test_a_latin1_csv_row_skips_that_row_only_and_strict_says_so_in_the_exit_status(tmp_path, capsys):
    path = tmp_path / "c.csv"
    lines = [b"sku,title,family"] + [f"s{i},Row {i},F{i % 50}".encode() for i in range(800)]
    lines[401] = "s400,Caf\xe9,F0".encode("latin-1")
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CommandError, match="1 row\\(s\\) skipped") as failed:
        call_command("import_catalogue", str(path), "--no-progress", "--strict")
    assert failed.value.returncode == 3
    out, err = capsys.readouterr()
    assert "Read 800 rows: 799 created" in out and "1 skipped" in out
    assert "row 402: row: row is not valid UTF-8 text [skipped]" in err
    assert Product.objects.count() == 799 and Product.objects.filter(sku="s799").exists()


def test_control_characters_in_identifiers_are_row_errors(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"sku": "BAD-NL\nX", "family": "BF", "title": "A"},
            {"sku": "ok", "family": "FAM\nNL", "title": "B"},
        ],
    )
    call_command("import_catalogue", str(path), "--no-progress")
    out, err = capsys.readouterr()
    assert "2 skipped" in out and "U+000A" in err
    assert not Product.objects.exists()


def test_command_fails_clearly_when_file_cannot_be_read(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_catalogue", str(tmp_path / "nope.jsonl"))
    with pytest.raises(CommandError, match="not a directory"):
        call_command("import_catalogue", str(tmp_path / "nope.jsonl"), "--images-root", str(tmp_path / "x"))


def test_command_exit_status_from_a_real_process(tmp_path):
    import subprocess
    import sys

    from catalog_review.runtime import PROJECT_ROOT

    result = subprocess.run(
        [sys.executable, "manage.py", "import_catalogue", str(tmp_path / "none.csv")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "none.csv: no such file" in result.stderr and "Traceback" not in result.stderr
