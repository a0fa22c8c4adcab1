"""Catalogue import throughput: hm-dev (4,168 listings with images) into a fresh database, then the
same file again (the no-change path), then a 3x-scaled copy (12,504 listings; skus suffixed, same
image files re-verified per listing).

usage: .venv/bin/python benchmarks/import_bench.py [hm_dev_DIR]
Uses its own database (catalog_review_bench) and media dir on the embedded PostgreSQL; prints one
JSON line per run, to be recorded in BENCHMARKS.md.
"""

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.harness import ROOT, fresh_database, manage

DB = "catalog_review_bench"


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path, nargs="?", default=ROOT.parent / "shared" / "data" / "hm-dev")
    hm_dev = ap.parse_args().eval_dir
    media = Path(tempfile.mkdtemp(prefix="bench-media-"))
    env = {"DATABASE_NAME": DB, "MEDIA_ROOT": str(media)}
    fresh_database(DB, env=env)

    scaled = hm_dev / "catalogue.jsonl"
    rows = [json.loads(line) for line in open(scaled)]
    scaled_path = Path(tempfile.mkdtemp(prefix="bench-cat-")) / "catalogue.jsonl"
    with open(scaled_path, "w") as fh:
        for copy in range(3):
            for row in rows:
                fh.write(
                    json.dumps(row | {"sku": f"{row['sku']}-{copy}", "family": f"{row['family']}-{copy}"})
                    + "\n"
                )

    runs = [
        ("hm-dev first import", hm_dev / "catalogue.jsonl", len(rows)),
        ("hm-dev re-import (no change)", hm_dev / "catalogue.jsonl", len(rows)),
        ("hm-dev x3 first import", scaled_path, 3 * len(rows)),
    ]
    for name, path, n in runs:
        extra = ["--images-root", str(hm_dev)] if path == scaled_path else []
        t0 = time.perf_counter()
        result = manage("import_catalogue", str(path), "--no-progress", *extra, env=env)
        seconds = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    "run": name,
                    "listings": n,
                    "seconds": round(seconds, 2),
                    "listings_per_minute": round(n / seconds * 60),
                    "summary": result.stdout.strip(),
                    "machine": f"{platform.machine()} {os.cpu_count()} cores",
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
        )
    shutil.rmtree(media, ignore_errors=True)
    shutil.rmtree(scaled_path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
