"""The confirmed errors and their fixes, for the catalogue system (DESIGN 4 `export_corrections`, 7
`GET /api/corrections`): one line per confirmed error in force."""

from __future__ import annotations

import csv
import json

from catalog_review.services.review import CORRECTION_FIELDS, correction_line, corrections_in_force


def write_corrections(fh, *, csv_format: bool) -> int:
    """Write every correction in force to the text file `fh` (JSON lines, or CSV with a header)."""
    writer = None
    if csv_format:
        writer = csv.DictWriter(fh, fieldnames=CORRECTION_FIELDS)
        writer.writeheader()
    n = 0
    for row in corrections_in_force().iterator(chunk_size=2000):
        line = correction_line(row)
        if writer is not None:
            writer.writerow({k: "" if v is None else v for k, v in line.items()})
        else:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
    return n
