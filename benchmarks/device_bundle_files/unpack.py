"""Write each packed catalogue as an evaluation directory: python3 unpack.py DEST"""

import json
import shutil
import sys
from pathlib import Path

here, dest = Path(__file__).resolve().parent, Path(sys.argv[1])
for catalogue in sorted((here / "catalogues").iterdir()):
    out = dest / catalogue.name
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in ("catalogue.jsonl", "truth.json"):
        shutil.copy(catalogue / name, out / name)
    for path, digest in json.loads((catalogue / "images.json").read_text()).items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(here / "images" / f"{digest}.jpg", target)
    print(f"{out}: {len(json.loads((catalogue / 'images.json').read_text()))} images")
