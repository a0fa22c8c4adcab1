"""Reading and validating catalogue rows (no database)."""

import pytest

from catalog_review.services.catalogue_file import (
    CatalogueFileError,
    ListingInput,
    RowError,
    read_raw_rows,
    validate_row,
)


def validate(raw):
    return validate_row(3, raw, title_max_chars=50)


def test_a_full_row_is_read_as_given():
    listing = validate(
        {
            "sku": "0111565001",
            "title": " 20 den 1p Stockings ",
            "description": "Matt.",
            "family": "111565",
            "category": ["Ladieswear", "Socks & Tights"],
            "attributes": {"colour": "Black", "size": 38},
            "image": "images/a.jpg",
        }
    )
    assert listing == ListingInput(
        row=3,
        sku="0111565001",
        title="20 den 1p Stockings",
        description="Matt.",
        family="111565",
        category=["Ladieswear", "Socks & Tights"],
        attributes={"colour": "Black", "size": 38},
        image="images/a.jpg",
    )


def test_minimal_row_defaults_family_to_its_own_sku():
    listing = validate({"sku": 42, "title": "Umbrella"})
    assert listing.sku == "42" and listing.family == "42" and listing.image is None and listing.category == []


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"title": "x"}, "sku", "sku is missing"),
        ({"sku": "", "title": "x"}, "sku", "sku is missing"),
        ({"sku": "   ", "title": "x"}, "sku", "sku is blank"),
        ({"sku": ["a"], "title": "x"}, "sku", "sku must be a string, got a list"),
        ({"sku": True, "title": "x"}, "sku", "sku must be a string, got true/false"),
        ({"sku": "a"}, "title", "title is missing"),
        ({"sku": "a", "title": 12}, "title", "title must be a string, got a number"),
        ({"sku": "a", "title": "x" * 51}, "title", "title is longer than 50 characters"),
        (
            {"sku": "a", "title": "x", "description": {}},
            "description",
            "description must be a string, got an object",
        ),
        ({"sku": "a", "title": "x", "family": 1.5}, "family", "family must be a string, got a number"),
        (
            {"sku": "a", "title": "x", "category": 7},
            "category",
            "category must be a list of strings, got a number",
        ),
        ({"sku": "a", "title": "x", "category": ["A", ""]}, "category", "category has an empty level"),
        ({"sku": "a", "title": "x", "category": ["A", 2]}, "category", "category must be a list of strings"),
        (
            {"sku": "a", "title": "x", "attributes": "red"},
            "attributes",
            "attributes must be an object, got a string",
        ),
        (
            {"sku": "a", "title": "x", "attributes": {"c": [1]}},
            "attributes.c",
            "attribute values must be text or numbers, got a list",
        ),
        (
            {"sku": "a", "title": "x", "image": 5},
            "image",
            "image must be a path, a URL or null, got a number",
        ),
    ],
)
def test_wrong_values_name_the_field_and_the_reason(raw, field, reason):
    errors = validate(raw)
    assert isinstance(errors, list)
    assert (
        RowError(
            3,
            field,
            reason,
            sku=raw.get("sku") if isinstance(raw.get("sku"), str) and raw["sku"].strip() else None,
        )
        in errors
    )


def test_every_problem_of_a_row_is_reported_at_once():
    errors = validate({"sku": "a", "title": 5, "category": 3, "image": []})
    assert {e.field for e in errors} == {"title", "category", "image"}


def test_control_characters_are_dropped_from_text_and_category_string_is_split():
    listing = validate({"sku": " a-1 ", "title": "Red\x07 dress", "category": "Women > Dresses"})
    assert listing.sku == "a-1" and listing.title == "Red dress" and listing.category == ["Women", "Dresses"]


@pytest.mark.parametrize(
    ("raw", "field", "char"),
    [
        ({"sku": "BAD-NL\nX", "title": "x"}, "sku", "U+000A"),
        ({"sku": "a\x00b", "title": "x"}, "sku", "U+0000"),
        ({"sku": "a", "title": "x", "family": "FAM\nNL"}, "family", "U+000A"),
        ({"sku": "a", "title": "x", "family": "F\tX"}, "family", "U+0009"),
        ({"sku": "a\u200bb", "title": "x"}, "sku", "U+200B"),
        ({"sku": "a\u2028b", "title": "x"}, "sku", "U+2028"),
    ],
)
def test_identifiers_with_control_characters_are_refused(raw, field, char):
    errors = validate(raw)
    assert isinstance(errors, list) and [e.field for e in errors] == [field]
    assert char in errors[0].reason and "not allowed" in errors[0].reason


def test_every_text_field_is_capped():
    errors = validate(
        {
            "sku": "a",
            "title": "x",
            "description": "d" * 20_001,
            "attributes": {"colour": "r" * 1_001, "k" * 101: "v"},
            "image": "https://example.com/" + "i" * 2_048,
        }
    )
    fields = sorted(e.field for e in errors)
    assert fields == ["attributes.colour", "attributes." + "k" * 100, "description", "image"]
    assert isinstance(
        validate({"sku": "a", "title": "x", "attributes": {str(i): i for i in range(101)}}), list
    )


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_huge_line_is_one_row_error_and_the_rows_after_it_are_read(tmp_path, suffix):
    path = tmp_path / f"c.{suffix}"
    huge = "x" * 3_000_000
    if suffix == "jsonl":
        path.write_text(
            f'{{"sku": "a", "title": "A"}}\n{{"sku": "h", "title": "{huge}"}}\n{{"sku": "b", "title": "B"}}\n'
        )
        first, after = 1, 3
    else:
        path.write_text(f"sku,title\na,A\nh,{huge}\nb,B\n")
        first, after = 2, 4
    rows = list(read_raw_rows(path))
    assert [n for n, _ in rows] == [first, first + 1, after]
    assert rows[1][1] == RowError(first + 1, "", "line is longer than 1,000,000 bytes")
    assert rows[2][1]["sku"] == "b"


def test_a_csv_row_that_is_not_utf8_is_one_row_error_and_every_good_row_is_read(tmp_path):
    path = tmp_path / "c.csv"
    lines = [b"sku,title"] + [f"s{i},Good row {i}".encode() for i in range(800)]
    lines[401] = "s400,Caf\xe9 cr\xe8me".encode("latin-1")  # one Latin-1 row at line 402
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = list(read_raw_rows(path))
    errors = [(n, r) for n, r in rows if isinstance(r, RowError)]
    assert errors == [(402, RowError(402, "", "row is not valid UTF-8 text"))]
    assert len(rows) == 800 and rows[-1] == (801, {"sku": "s799", "title": "Good row 799"})
    # a bad byte in the header: the file is refused, saying why
    path.write_bytes(b"sku,t\xefitle\n" + b"\n".join(lines[1:]))
    with pytest.raises(CatalogueFileError, match="not UTF-8"):
        list(read_raw_rows(path))


def test_jsonl_reader_reports_malformed_lines_and_keeps_going(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'{"sku": "a", "title": "A"}\n\n{not json\n[1, 2]\n\xff\xfe\n{"sku": "b", "title": "B"}\n'
    )
    rows = list(read_raw_rows(path))
    assert [n for n, _ in rows] == [1, 3, 4, 5, 6]
    assert rows[0][1] == {"sku": "a", "title": "A"}
    assert "not valid JSON" in rows[1][1].reason
    assert rows[2][1].reason == "expected a JSON object, got a list"
    assert "not valid UTF-8" in rows[3][1].reason
    assert rows[4][1]["sku"] == "b"


def test_csv_reader_maps_columns_to_the_jsonl_shape(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "sku,title,family,category,attr_colour,image\n"
        'a,"Dress, red",F1,Women > Dresses,Red,\n'
        "b,Shirt,F1,,,img/b.jpg\n"
        "c,short row\n"
    )
    rows = list(read_raw_rows(path))
    assert rows[0] == (
        2,
        {
            "sku": "a",
            "title": "Dress, red",
            "family": "F1",
            "category": ["Women", "Dresses"],
            "attributes": {"colour": "Red"},
        },
    )
    assert rows[1] == (3, {"sku": "b", "title": "Shirt", "family": "F1", "image": "img/b.jpg"})
    assert rows[2][1] == RowError(4, "", "row has 2 fields, the header has 6")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the CSV file is empty"),
        ("name,colour\nx,y\n", "has no sku or title column"),
        ("sku,title,sku\n", "repeats column(s) sku"),
    ],
)
def test_unreadable_csv_is_a_file_error(tmp_path, content, message):
    path = tmp_path / "c.csv"
    path.write_text(content)
    with pytest.raises(CatalogueFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(read_raw_rows(path))


def test_missing_file_is_a_file_error(tmp_path):
    with pytest.raises(CatalogueFileError, match="no such file"):
        list(read_raw_rows(tmp_path / "nope.jsonl"))
    with pytest.raises(CatalogueFileError, match="not a regular file"):
        list(read_raw_rows(tmp_path))
