"""Quality of the ml_worker model on the planted-error protocol (../shared/eval), with timings.

usage: .venv/bin/python benchmarks/ml_quality.py [--seeds 7 8 9] [--ablations] [--steps N] [--work DIR]

For each seed: inject.py on hm-dev (--max-listings 2000), `python -m ml_worker.evaluate --train`,
metrics.py. With --ablations, also image-only, title-only and no-attention (pooled concat) variants on
the first seed. Prints one JSON line per run (metrics + time split) to record in BENCHMARKS.md.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/catalog-review-quality"))
    args = ap.parse_args()
    variants = [("MAPS", [])]
    ablations = [
        ("image only", ["--modality", "image"]),
        ("title only", ["--modality", "title"]),
        ("no attention (pooled concat)", ["--no-title-guidance"]),
    ]
    for n, seed in enumerate(args.seeds):
        data = args.work / f"hm-dev-2000-s{seed}"
        if not (data / "truth.json").exists():
            subprocess.run(
                [
                    sys.executable,
                    str(SHARED / "eval" / "inject.py"),
                    str(SHARED / "data" / "hm-dev"),
                    str(data),
                    "--max-listings",
                    "2000",
                    "--seed",
                    str(seed),
                ],
                check=True,
                capture_output=True,
            )
        for name, extra in variants + (ablations if args.ablations and n == 0 else []):
            scores = args.work / f"scores-s{seed}-{name.split()[0]}.jsonl"
            t0 = time.perf_counter()
            cmd = [
                sys.executable,
                "-m",
                "ml_worker.evaluate",
                str(data),
                "--out",
                str(scores),
                "--train",
                "--cache-dir",
                str(args.work / "cache"),
                *extra,
            ]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            stderr = run(cmd)
            timing = json.loads(stderr.strip().splitlines()[-1])
            metrics = subprocess.run(
                [sys.executable, str(SHARED / "eval" / "metrics.py"), str(data), str(scores)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            print(
                json.dumps(
                    {
                        "seed": seed,
                        "variant": name,
                        "wall_s": round(time.perf_counter() - t0, 1),
                        **timing,
                        **json.loads(metrics),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
