"""A catalogue read straight from disk (DESIGN section 6 JSONL), for training and evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Listing:
    sku: str
    title: str
    family: str
    category: tuple[str, ...]
    attributes: dict
    image: Path | None


def load_catalogue(path: Path) -> list[Listing]:
    """CATALOGUE_DIR (with catalogue.jsonl) or the JSONL file itself; image paths relative to it."""
    path = Path(path)
    file = path / "catalogue.jsonl" if path.is_dir() else path
    root = file.parent
    listings = []
    with open(file, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            image = row.get("image")
            listings.append(
                Listing(
                    sku=str(row["sku"]),
                    title=str(row["title"]),
                    family=str(row.get("family") or row["sku"]),
                    category=tuple(row.get("category") or ()),
                    attributes=row.get("attributes") or {},
                    image=(root / image)
                    if image and not str(image).startswith(("http://", "https://"))
                    else None,
                )
            )
    return listings
