import pytest
import torch

from ml_worker.config import MapsConfig
from ml_worker.modeling_maps import MapsModel
from tests.ml_worker.conftest import gpu, random_inputs


def test_shapes_normalisation_and_attention(tiny):
    model = MapsModel(tiny).eval()
    out = model(random_inputs(tiny))
    assert out.embedding.shape == (6, tiny.embed_dim)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(6), atol=1e-5)
    assert out.spatial_attention.shape == (6, 7, 7)
    assert torch.allclose(out.spatial_attention.sum((1, 2)), torch.ones(6), atol=1e-5)
    assert ((out.channel_attention > 0) & (out.channel_attention < 1)).all()
    assert (out.crop_box[:, 2:] > 0).all() and (out.crop_box[:, 2:] <= 1).all()
    for field in ("embedding", "image_embedding", "title_embedding"):
        assert torch.isfinite(getattr(out, field)).all()


def test_every_parameter_gets_a_gradient(tiny):
    model = MapsModel(tiny).train()
    out = model(random_inputs(tiny))
    logits = model.pair_logits(out, out, torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))
    loss = (
        logits.sum()
        + out.embedding.sum()
        + out.image_embedding.sum()
        + out.title_embedding.sum()
        + model.logit_scale
    )
    loss.backward()
    missing = [
        name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert missing == []


def test_pair_head_is_symmetric(tiny):
    model = MapsModel(tiny).eval()
    out = model(random_inputs(tiny))
    i, j = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    assert torch.allclose(model.pair_logits(out, out, i, j), model.pair_logits(out, out, j, i), atol=1e-6)


def test_title_only_listing_ignores_its_image_features(tiny):
    model = MapsModel(tiny).eval()
    x = random_inputs(tiny)
    a = model(x).embedding[-1]
    x.top[-1] += 5.0
    assert torch.allclose(model(x).embedding[-1], a), "the image of a title-only listing must not matter"


@pytest.mark.parametrize(("modality", "guidance"), [("image", True), ("title", True), ("multimodal", False)])
def test_ablation_variants_run(tiny, modality, guidance):
    config = MapsConfig.from_dict(tiny.to_dict() | {"modality": modality, "title_guidance": guidance})
    out = MapsModel(config)(random_inputs(config))
    assert torch.isfinite(out.embedding).all()
    if not guidance or modality != "multimodal":
        assert torch.allclose(out.spatial_attention, torch.full_like(out.spatial_attention, 1 / 49))


def test_config_round_trip_rejects_unknown_fields(tiny):
    assert MapsConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="unknown"):
        MapsConfig.from_dict(tiny.to_dict() | {"bogus": 1})


@pytest.mark.gpu
@gpu
def test_forward_and_backward_on_cuda(tiny):
    model = MapsModel(tiny).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(random_inputs(tiny).to("cuda"))
    out.embedding.float().sum().backward()
    assert torch.isfinite(out.embedding.float()).all()


def test_tuned_backbone_top_recomputes_the_7x7_map_and_learns(tiny):
    config = MapsConfig.from_dict(tiny.to_dict() | {"tune_backbone_top": True})
    model = MapsModel(config).eval()
    x = random_inputs(config)
    before = model(x)
    assert before.spatial_attention.shape == (6, 7, 7)  # 14x14 -> 7x7 by the stride-2 stage
    x.top[0] += 5.0  # the cached 7x7 map now feeds only the parameter-free descriptor
    after = model(x)
    assert torch.allclose(after.embedding, before.embedding, atol=1e-6)
    assert not torch.allclose(after.raw_image[0], before.raw_image[0])
    x.mid[0] += 1.0  # the learned image branch reads the 14x14 map through the tuned stages
    assert not torch.allclose(model(x).embedding[0], before.embedding[0])
    out = model.train()(x)
    (model.pair_logits(out, out).sum() + out.embedding.sum()).backward()
    grads = [p.grad for p in model.backbone_top.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)
