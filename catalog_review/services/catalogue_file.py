"""Reading a catalogue file (DESIGN section 6): JSONL or CSV rows -> validated `ListingInput`s.

Row numbers are 1-based lines of the file (for CSV, the line where the record starts, the header
being line 1), so a user can open the file at the reported place.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CATEGORY_SEPARATOR = " > "
ATTRIBUTE_COLUMN_PREFIX = "attr_"
MAX_ID_CHARS = 200
# identifiers (sku, family) are printable text: no control characters (newline, tab, NUL...), no
# invisible format characters, no line or paragraph separators (Unicode categories)
IDENTIFIER_FORBIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
MAX_CATEGORY_DEPTH = 10
MAX_CATEGORY_NAME_CHARS = 200
MAX_LINE_BYTES = 1_000_000  # one row's line in the file; a longer one is reported, never held in memory
MAX_DESCRIPTION_CHARS = 20_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_CHARS = 100
MAX_ATTRIBUTE_VALUE_CHARS = 1_000
MAX_IMAGE_CHARS = 2_048


class CatalogueFileError(Exception):
    """The file as a whole cannot be read as a catalogue (the command exits non-zero)."""


@dataclass(frozen=True)
class RowError:
    row: int
    field: str
    reason: str
    sku: str | None = None

    def as_dict(self) -> dict:
        return {"row": self.row, "sku": self.sku, "field": self.field, "reason": self.reason}


@dataclass
class ListingInput:
    row: int
    sku: str
    title: str
    description: str = ""
    family: str = ""
    category: list[str] = field(default_factory=list)
    attributes: dict = field(default_factory=dict)
    image: str | None = None


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "csv"


def count_rows(path: Path) -> int:
    """Cheap upper bound of the number of rows, for a progress bar."""
    with open(path, "rb") as fh:
        lines = sum(1 for _, line in _lines(fh) if line is None or line.strip())
    return max(0, lines - 1) if detect_format(path) == "csv" else lines


def read_raw_rows(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    """Yield (row number, raw dict) or (row number, RowError) for rows that are not even a record.

    Checks the file eagerly: raises CatalogueFileError here, before the first row, when the file
    cannot be read as a catalogue at all.
    """
    if not path.exists():
        raise CatalogueFileError(f"{path}: no such file")
    if not path.is_file():
        raise CatalogueFileError(f"{path}: not a regular file")
    try:
        fmt = detect_format(path)
        if fmt == "csv":
            return _read_csv(path)
        return _read_jsonl(open(path, "rb"))
    except OSError as exc:
        raise CatalogueFileError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def _lines(fh) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of a binary file, each line read up to MAX_LINE_BYTES: a longer line is
    skipped in chunks and given as None, so one huge line costs neither memory nor the rows after it."""
    number = 0
    while True:
        line = fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = fh.readline(MAX_LINE_BYTES)
            yield number, None
            continue
        yield number, line


def _too_long(number: int) -> RowError:
    return RowError(number, "", f"line is longer than {MAX_LINE_BYTES:,} bytes")


def _read_jsonl(fh) -> Iterator[tuple[int, dict | RowError]]:
    with fh:
        for number, raw_line in _lines(fh):
            if raw_line is None:
                yield number, _too_long(number)
                continue
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, RowError(number, "", f"line is not valid UTF-8 (byte {exc.start})")
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, RowError(number, "", f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(value, dict):
                yield number, RowError(number, "", f"expected a JSON object, got {_type_name(value)}")
                continue
            yield number, value


class _CsvSource:
    """The text lines the csv module reads, decoded line by line: bytes that are not UTF-8 become
    surrogates (so the row they are in is reported, and parsing stays on the file's real lines), and a
    line over MAX_LINE_BYTES becomes an empty line whose number is remembered."""

    def __init__(self, fh):
        self.fh = fh
        self.too_long: set[int] = set()
        self._lines = _lines(fh)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        number, line = next(self._lines)
        if line is None:
            self.too_long.add(number)
            return "\n"
        return line.decode("utf-8", errors="surrogateescape")

    def close(self) -> None:
        self.fh.close()


def _not_utf8(values) -> bool:
    return any(any("\udc80" <= ch <= "\udcff" for ch in v) for v in values)


def _read_csv(path: Path) -> Iterator[tuple[int, dict | RowError]]:
    source = _CsvSource(open(path, "rb"))
    reader = csv.reader(source)
    try:
        header = next(reader)
    except StopIteration:
        source.close()
        raise CatalogueFileError(f"{path}: the CSV file is empty (no header row)") from None
    except csv.Error as exc:
        source.close()
        raise CatalogueFileError(f"{path}: the CSV header cannot be read: {exc}") from None
    if _not_utf8(header) or 1 in source.too_long:
        source.close()
        raise CatalogueFileError(f"{path}: the CSV header cannot be read: it is not UTF-8 text")
    header = [h.strip() for h in header]
    missing = [name for name in ("sku", "title") if name not in header]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if missing or duplicated:
        source.close()
        if missing:
            raise CatalogueFileError(
                f"{path}: the CSV header has no {' or '.join(missing)} column (found: {', '.join(header)})"
            )
        raise CatalogueFileError(f"{path}: the CSV header repeats column(s) {', '.join(duplicated)}")
    return _csv_rows(source, reader, header)


def _csv_rows(source: _CsvSource, reader, header: list[str]) -> Iterator[tuple[int, dict | RowError]]:
    try:
        while True:
            start_line = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start_line, RowError(start_line, "", f"CSV row cannot be parsed: {exc}")
                continue
            long_lines = sorted(n for n in source.too_long if start_line <= n <= reader.line_num)
            if long_lines:
                yield long_lines[0], _too_long(long_lines[0])
                continue
            if not any(v.strip() for v in values):
                continue
            if _not_utf8(values):
                yield start_line, RowError(start_line, "", "row is not valid UTF-8 text")
                continue
            if len(values) != len(header):
                yield (
                    start_line,
                    RowError(start_line, "", f"row has {len(values)} fields, the header has {len(header)}"),
                )
                continue
            yield start_line, _csv_record(dict(zip(header, values, strict=True)))
    finally:
        source.close()


def _csv_record(cells: dict[str, str]) -> dict:
    """A CSV row in the JSONL shape: empty cells are absent, category split on ' > ',
    attr_<name> columns gathered into attributes."""
    record: dict = {}
    attributes = {}
    for name, value in cells.items():
        if value == "":
            continue
        if name.startswith(ATTRIBUTE_COLUMN_PREFIX):
            attributes[name[len(ATTRIBUTE_COLUMN_PREFIX) :]] = value
        elif name == "category":
            record["category"] = [part.strip() for part in value.split(CATEGORY_SEPARATOR.strip())]
        else:
            record[name] = value
    if attributes:
        record["attributes"] = attributes
    return record


def _type_name(value) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _clean_text(value: str) -> str:
    """Strip, and drop control characters other than newline and tab."""
    return "".join(ch for ch in value.strip() if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def _identifier(raw: dict, name: str, row: int, *, required: bool) -> tuple[str | None, RowError | None]:
    value = raw.get(name)
    if value is None or value == "":
        if required:
            return None, RowError(row, name, f"{name} is missing")
        return None, None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, RowError(row, name, f"{name} must be a string, got {_type_name(value)}")
    text = str(value).strip()
    if not text:
        return (None, RowError(row, name, f"{name} is blank")) if required else (None, None)
    bad = next((ch for ch in text if unicodedata.category(ch) in IDENTIFIER_FORBIDDEN), None)
    if bad is not None:
        return None, RowError(
            row, name, f"{name} contains a control or separator character (U+{ord(bad):04X}): not allowed"
        )
    if len(text) > MAX_ID_CHARS:
        return None, RowError(row, name, f"{name} is longer than {MAX_ID_CHARS} characters")
    return text, None


def validate_row(row: int, raw: dict, *, title_max_chars: int) -> ListingInput | list[RowError]:
    """Check one raw record; return the listing or every problem found in it."""
    errors: list[RowError] = []
    sku, err = _identifier(raw, "sku", row, required=True)
    if err:
        errors.append(err)

    title = raw.get("title")
    if title is None or title == "":
        errors.append(RowError(row, "title", "title is missing"))
    elif not isinstance(title, str):
        errors.append(RowError(row, "title", f"title must be a string, got {_type_name(title)}"))
    else:
        title = _clean_text(title)
        if not title:
            errors.append(RowError(row, "title", "title is blank"))
        elif len(title) > title_max_chars:
            errors.append(RowError(row, "title", f"title is longer than {title_max_chars} characters"))

    description = raw.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        errors.append(
            RowError(row, "description", f"description must be a string, got {_type_name(description)}")
        )
        description = ""
    else:
        description = _clean_text(description)
        if len(description) > MAX_DESCRIPTION_CHARS:
            errors.append(
                RowError(
                    row, "description", f"description is longer than {MAX_DESCRIPTION_CHARS:,} characters"
                )
            )

    family, err = _identifier(raw, "family", row, required=False)
    if err:
        errors.append(err)

    category = _category(raw.get("category"), row, errors)
    attributes = _attributes(raw.get("attributes"), row, errors)

    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        errors.append(RowError(row, "image", f"image must be a path, a URL or null, got {_type_name(image)}"))
        image = None
    elif isinstance(image, str):
        image = image.strip() or None
        if image and len(image) > MAX_IMAGE_CHARS:
            errors.append(RowError(row, "image", f"image is longer than {MAX_IMAGE_CHARS:,} characters"))

    if errors:
        return [RowError(e.row, e.field, e.reason, sku=sku) for e in errors]
    return ListingInput(
        row=row,
        sku=sku,
        title=title,
        description=description,
        family=family or sku,  # a listing without a family is a family of its own
        category=category,
        attributes=attributes,
        image=image,
    )


def _category(value, row: int, errors: list[RowError]) -> list[str]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(CATEGORY_SEPARATOR.strip())]
    elif isinstance(value, list):
        if not all(isinstance(p, str) for p in value):
            errors.append(RowError(row, "category", "category must be a list of strings"))
            return []
        parts = [_clean_text(p) for p in value]
    else:
        errors.append(
            RowError(row, "category", f"category must be a list of strings, got {_type_name(value)}")
        )
        return []
    if any(not p for p in parts):
        errors.append(RowError(row, "category", "category has an empty level"))
        return []
    if len(parts) > MAX_CATEGORY_DEPTH:
        errors.append(RowError(row, "category", f"category is deeper than {MAX_CATEGORY_DEPTH} levels"))
        return []
    if any(len(p) > MAX_CATEGORY_NAME_CHARS or CATEGORY_SEPARATOR.strip() in p for p in parts):
        errors.append(RowError(row, "category", "a category level is too long or contains '>'"))
        return []
    return parts


def _attributes(value, row: int, errors: list[RowError]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(RowError(row, "attributes", f"attributes must be an object, got {_type_name(value)}"))
        return {}
    if len(value) > MAX_ATTRIBUTES:
        errors.append(RowError(row, "attributes", f"more than {MAX_ATTRIBUTES} attributes"))
        return {}
    cleaned = {}
    for key, item in value.items():
        if len(str(key)) > MAX_ATTRIBUTE_KEY_CHARS or (
            isinstance(item, str) and len(item) > MAX_ATTRIBUTE_VALUE_CHARS
        ):
            errors.append(
                RowError(
                    row,
                    f"attributes.{str(key)[:MAX_ATTRIBUTE_KEY_CHARS]}",
                    f"attribute names are at most {MAX_ATTRIBUTE_KEY_CHARS} characters, "
                    f"values at most {MAX_ATTRIBUTE_VALUE_CHARS:,}",
                )
            )
            continue
        if item is not None and not isinstance(item, (str, int, float, bool)):
            errors.append(
                RowError(
                    row,
                    f"attributes.{key}",
                    f"attribute values must be text or numbers, got {_type_name(item)}",
                )
            )
            continue
        cleaned[_clean_text(str(key))] = _clean_text(item) if isinstance(item, str) else item
    return cleaned
