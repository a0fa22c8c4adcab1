"""A catalogue read straight from disk (DESIGN section 6 JSONL), for training and evaluation."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# attributes that describe the listing's offer, not what the product looks like or is called
NOT_VARIANT = frozenset({"price", "url", "stock", "availability", "gtin", "ean", "upc", "mpn"})


@dataclass
class Listing:
    sku: str
    title: str
    family: str
    category: tuple[str, ...]
    attributes: dict
    image: Path | None
    # the attributes that tell this listing apart from its siblings (`with_variant_attributes`)
    variant: dict = field(default_factory=dict)
    description: str = ""

    @property
    def text(self) -> str:
        """What the model reads of the listing: its title plus its variant attributes. A family's
        members usually share one title; the attributes are what tell a variant apart."""
        if not self.variant:
            return self.title
        return self.title + " | " + "; ".join(f"{k}: {v}" for k, v in sorted(self.variant.items()))


def variant_keys(listings: list[Listing]) -> dict[str, list[str]]:
    """Per family: the attribute names whose values differ between its members (colour, size...);
    a one-listing family has none."""
    values = defaultdict(lambda: defaultdict(set))
    for x in listings:
        for k, v in x.attributes.items():
            if k.lower() not in NOT_VARIANT and isinstance(v, str | int | float) and str(v).strip():
                values[x.family][k].add(str(v).strip().lower())
    return {
        family: sorted(k for k, seen in attrs.items() if len(seen) > 1) for family, attrs in values.items()
    }


def with_variant_attributes(listings: list[Listing], keys: list[str] | None = None) -> list[Listing]:
    """Set each listing's `variant` (in place; returns `listings`): the attributes named in `keys`,
    or by default those whose values differ within its family. Whole families must be passed
    together (the default compares a listing with its siblings)."""
    per_family = variant_keys(listings) if keys is None else {}
    for x in listings:
        names = keys if keys is not None else per_family.get(x.family, [])
        x.variant = {k: str(x.attributes[k]).strip() for k in names if str(x.attributes.get(k, "")).strip()}
    return listings


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
                    description=str(row.get("description") or ""),
                )
            )
    return with_variant_attributes(listings)
