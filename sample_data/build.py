"""Build the bundled demo catalogue from the Grocery Store Dataset (MIT; ../shared/data/grocery).

usage: python sample_data/build.py [GROCERY_DIR] [OUT_DIR]
Writes OUT_DIR/catalogue.jsonl, OUT_DIR/images/ (the iconic images, plus two photos for planted
duplicates) and OUT_DIR/PLANTED_ERRORS.json. Listings are the 81 fine classes; families are the 42
coarse classes (Apple, Milk, Juice ...). The planted errors are documented in sample_data/README.md.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
GROCERY = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data" / "grocery"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "grocery"

# (sku of the listing, what is wrong with it) — see README.md
MOVED = {"GS-028": "Milk"}  # Bravo apple juice listed in the Milk family (wrong product linked)
MOVED_HARD = {"GS-021": "Apple"}  # Conference pear listed among the apples (same aisle, other product)
WRONG_IMAGE = {"GS-071": "GS-078"}  # Red bell pepper listing shows the Regular tomato image
DUPLICATES = [
    # (new sku, original sku, title edit, same family?, image: "natural" photo or a re-encoded crop)
    ("GS-900", "GS-041", "ARLA STANDARD MILK 1L", True, "natural"),
    ("GS-901", "GS-000", "Golden Delicious apple", False, "crop"),
]


def title_of(class_name: str) -> str:
    return class_name.replace("-", " ")


def info_attributes(path: Path) -> dict:
    attributes = {}
    if not path.exists():
        return attributes
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key.strip() in ("Country and volume", "Manufacturer and volume") and value:
            origin, _, size = value.rpartition(",")
            label = "country" if key.startswith("Country") else "brand"
            attributes[label] = origin.strip() or value
            if origin:
                attributes["size"] = size.strip()
        elif key.strip() == "Manufacturing country" and value:
            attributes["country"] = value
    return attributes


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    rows = []
    with open(GROCERY / "classes.csv", newline="") as fh:
        for record in csv.DictReader(fh):
            class_name = record["Class Name (str)"]
            class_id = int(record["Class ID (int)"])
            coarse = record["Coarse Class Name (str)"]
            iconic = GROCERY / record["Iconic Image Path (str)"].lstrip("/")
            description = GROCERY / record["Product Description Path (str)"].lstrip("/")
            department = iconic.relative_to(GROCERY / "iconic-images-and-descriptions").parts[0]
            sku = f"GS-{class_id:03d}"
            image = f"images/{sku}.jpg"
            shutil.copyfile(iconic, OUT / image)
            info = description.with_name(description.name.replace("_Description", "_Information"))
            rows.append(
                {
                    "sku": sku,
                    "title": title_of(class_name),
                    "description": description.read_text(encoding="utf-8", errors="replace").strip(),
                    "family": coarse.lower(),
                    "category": ["Grocery", department, title_of(coarse)],
                    "attributes": info_attributes(info),
                    "image": image,
                }
            )
    by_sku = {r["sku"]: r for r in rows}
    for sku, family in {**MOVED, **MOVED_HARD}.items():
        by_sku[sku]["family"] = family.lower()
    for sku, donor in WRONG_IMAGE.items():
        shutil.copyfile(OUT / by_sku[donor]["image"], OUT / by_sku[sku]["image"])
    for new_sku, original, title, same_family, kind in DUPLICATES:
        source = by_sku[original]
        copy = json.loads(json.dumps(source)) | {
            "sku": new_sku,
            "title": title,
            "image": f"images/{new_sku}.jpg",
        }
        if not same_family:
            copy["family"] = f"{source['family']}-2"
        if kind == "natural":
            # a shop-floor photo of the same product instead of the catalogue's iconic image
            photo = sorted((GROCERY / "val" / "Packages" / "Milk" / "Arla-Standard-Milk").glob("*.jpg"))[0]
            shutil.copyfile(photo, OUT / copy["image"])
        else:
            image = Image.open(OUT / source["image"]).convert("RGB")
            w, h = image.size
            buffer = io.BytesIO()
            image.crop((int(w * 0.04), int(h * 0.04), int(w * 0.96), int(h * 0.96))).save(
                buffer, "JPEG", quality=80
            )
            (OUT / copy["image"]).write_bytes(buffer.getvalue())
        rows.append(copy)
    with open(OUT / "catalogue.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    planted = {
        "wrong_variant": [
            {"sku": s, "kind": "wrong_product", "to_family": f.lower()} for s, f in MOVED.items()
        ]
        + [
            {"sku": s, "kind": "wrong_product", "to_family": f.lower(), "hard": True}
            for s, f in MOVED_HARD.items()
        ]
        + [{"sku": s, "kind": "wrong_image", "image_from": d} for s, d in WRONG_IMAGE.items()],
        "duplicate": [{"sku": n, "of": o, "same_family": s} for n, o, _, s, _ in DUPLICATES],
    }
    (OUT / "PLANTED_ERRORS.json").write_text(json.dumps(planted, indent=1) + "\n")
    shutil.copyfile(GROCERY / "LICENSE", OUT / "LICENSE")
    print(f"{len(rows)} listings in {len({r['family'] for r in rows})} families -> {OUT}")


if __name__ == "__main__":
    main()
