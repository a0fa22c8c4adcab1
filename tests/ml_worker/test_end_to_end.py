"""End-to-end fine-tuning (MapsConfig.end_to_end): both real backbones train from pixels and token ids,
and scoring runs the model's own fine-tuned backbones."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ml_worker.backbones import EfficientNetLite0
from ml_worker.catalogue import load_catalogue
from ml_worker.checkpoint import load_checkpoint, save_checkpoint
from ml_worker.config import MapsConfig, TrainConfig
from ml_worker.end_to_end import augment_pixels, load_raw_inputs
from ml_worker.ensemble import train_cross_fit
from ml_worker.evaluate import main
from ml_worker.features import extract_features
from ml_worker.modeling_maps import MapsModel
from ml_worker.scoring import encode_all
from ml_worker.train import TrainingSet, train_model
from tests.ml_worker.conftest import gpu
from tests.ml_worker.test_evaluate import catalogue  # noqa: F401 (fixture)


def small_config(**kw) -> MapsConfig:
    # the real backbones (their channel widths), small heads, 64 px images: fast on a CPU
    return MapsConfig(
        end_to_end=True, image_size=64, d_model=32, heads=2, title_pool_heads=2, embed_dim=16, **kw
    )


def train(catalogue_dir, device="cpu", steps=2):
    listings = load_catalogue(catalogue_dir)
    config = small_config()
    features = extract_features(listings, config, device=device, progress=False)
    raw = load_raw_inputs(listings, config, progress=False)
    data = TrainingSet(features, [x.family for x in listings], [x.category for x in listings], raw=raw)
    train_config = TrainConfig(
        steps=steps, families_per_batch=3, listings_per_family=2, backbone_lr_scale=1.0
    )
    model, info = train_model(
        data, np.arange(len(listings)), config, train_config, device=device, progress=False
    )
    return listings, config, features, raw, model, info


def test_raw_inputs_are_the_preprocessed_images_and_padded_token_ids(catalogue):  # noqa: F811
    listings = load_catalogue(catalogue)
    config = small_config()
    raw = load_raw_inputs(listings, config, progress=False)
    assert raw.pixels.dtype == torch.uint8 and raw.pixels.shape == (len(listings), 3, 64, 64)
    assert raw.has_image.tolist() == [x.image is not None for x in listings]
    assert raw.pixels[~raw.has_image].eq(0).all()
    assert raw.input_ids.shape == raw.adv_input_ids.shape == (len(listings), config.max_tokens)
    assert not torch.equal(raw.input_ids, raw.adv_input_ids)  # the adversarial rewrites differ
    # the same preprocessing as the frozen feature path: the decoded pixels give the same maps
    image_model = EfficientNetLite0.pretrained().eval()
    frozen = extract_features(listings, config, progress=False, training=False)
    with torch.no_grad():
        maps = image_model(raw.pixels[:2].float() / 127.5 - 1.0)
    assert torch.allclose(maps.top, frozen.top[:2].float(), atol=0.05)


def test_trainable_backbones_are_float32_whatever_the_directory_stores(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from ml_worker.backbones import default_text_model_dir

    half = tmp_path / "minilm-fp16"
    AutoModel.from_pretrained(default_text_model_dir()).half().save_pretrained(half)
    AutoTokenizer.from_pretrained(default_text_model_dir()).save_pretrained(half)
    model = MapsModel(small_config(text_model_dir=str(half)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp16 + AdamW = NaN at step 1


def test_augmented_pixels_stay_close_to_the_image_and_follow_the_seed():
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    a = augment_pixels(pixels, torch.Generator().manual_seed(1))
    b = augment_pixels(pixels, torch.Generator().manual_seed(1))
    c = augment_pixels(pixels, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == pixels.shape and a.min() >= -1 and a.max() <= 1
    assert 0 < (a - pixels).abs().mean() < 0.5


def test_both_backbones_learn_and_score_with_their_fine_tuned_weights(catalogue, tmp_path):  # noqa: F811
    listings, config, frozen, _raw, model, info = train(catalogue)
    assert all(np.isfinite(v) for v in info["final_losses"].values())
    fresh = EfficientNetLite0.pretrained()
    moved = [
        name
        for (name, p), (_, q) in zip(
            model.image_backbone.named_parameters(), fresh.named_parameters(), strict=True
        )
        if not torch.equal(p, q)
    ]
    assert "_conv_stem.weight" in moved and "_conv_head.weight" in moved  # first and last layers train
    # pretrained BatchNorm statistics are kept (eval mode), only the affine terms learn
    assert torch.equal(model.image_backbone._bn0.running_mean, fresh._bn0.running_mean)
    text_fresh = dict(type(model.text_encoder)().model.named_parameters())
    assert any(not torch.equal(p, text_fresh[n]) for n, p in model.text_encoder.model.named_parameters())

    tuned = extract_features(listings, config, progress=False, training=False, backbones=model.backbones())
    assert not torch.allclose(tuned.top, frozen.top) and not torch.allclose(tuned.tokens, frozen.tokens)

    # the checkpoint carries the backbones: a reload embeds exactly the same
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    again = extract_features(listings, config, progress=False, training=False, backbones=loaded.backbones())
    assert torch.equal(again.top, tuned.top)
    assert torch.allclose(
        encode_all(loaded, again).embedding, encode_all(model.eval(), tuned).embedding, atol=1e-6
    )


def test_evaluate_end_to_end_scores_every_listing(catalogue, tmp_path):  # noqa: F811
    out = tmp_path / "scores.jsonl"
    args = [str(catalogue), "--out", str(out), "--train", "--steps", "2", "--end-to-end"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--save-model", str(tmp_path / "m")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and all(r["model_version"] == "maps-multimodal-e2e-cf2-s0" for r in rows)
    assert all(r["duplicate_score"] is not None for r in rows)
    again = tmp_path / "again.jsonl"
    assert main([str(catalogue), "--out", str(again), "--model", str(tmp_path / "m")]) == 0
    assert len(again.read_text().splitlines()) == 10


def test_end_to_end_refuses_what_it_cannot_do(catalogue, tmp_path):  # noqa: F811
    with pytest.raises(SystemExit) as exit_info:
        main([str(catalogue), "--out", str(tmp_path / "x"), "--train", "--end-to-end", "--tune-backbone-top"])
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="drop tune_backbone_top"):
        MapsModel(small_config(tune_backbone_top=True))
    listings = load_catalogue(catalogue)
    features = extract_features(listings, small_config(), progress=False)
    no_raw = TrainingSet(features, [x.family for x in listings], [x.category for x in listings])
    with pytest.raises(ValueError, match="raw inputs"):
        train_model(no_raw, np.arange(len(listings)), small_config(), TrainConfig(steps=1))
    with pytest.raises(ValueError, match="raw inputs"):
        train_cross_fit(no_raw, small_config(), TrainConfig(steps=1))


def test_cross_fitted_versions_fine_tune_each_member_and_validate_on_its_own_features(catalogue):  # noqa: F811
    """An app version trained end to end: every member owns its backbones, and validation (its own and
    the baseline's, itself end to end) reads the listings through each model's own backbones."""
    listings = load_catalogue(catalogue)
    config = small_config()
    frozen = extract_features(listings, config, progress=False)
    raw = load_raw_inputs(listings, config, progress=False)
    read_by = []

    def features_of(model):
        read_by.append(model)
        return extract_features(listings, config, progress=False, backbones=model.backbones())

    data = TrainingSet(
        frozen, [x.family for x in listings], [x.category for x in listings], raw=raw, features_of=features_of
    )
    train_config = TrainConfig(steps=2, folds=2, families_per_batch=3, listings_per_family=2)
    first, _ = train_cross_fit(data, config, train_config, progress=False)
    assert len(first.folds) == 2
    members = [first.final, *first.folds]
    assert all(m.backbones() is not None for m in members)
    stems = [m.image_backbone._conv_stem.weight for m in members]
    assert not torch.equal(stems[0], stems[1]) and not torch.equal(stems[1], stems[2])  # each its own
    assert {id(m) for m in read_by} == {id(m) for m in first.folds}  # each fold model read its own
    read_by.clear()
    second, info = train_cross_fit(data, config, train_config, progress=False, baseline=first)
    assert (
        "validation_families" in info["validation"] and "validation_families" in info["baseline_validation"]
    )
    assert {id(m) for m in first.folds} <= {id(m) for m in read_by}  # the baseline read through its own
    with pytest.raises(ValueError, match="needs features_of"):
        train_cross_fit(replace(data, features_of=None), config, train_config, progress=False)

    # a text query lands where a listing with that title lands: through the fine-tuned MiniLM
    from ml_worker.query import title_query_vector

    tuned = extract_features(
        listings, config, progress=False, training=False, backbones=second.final.backbones()
    )
    want = encode_all(second.final.eval(), tuned).title_embedding[0].numpy()
    query = title_query_vector(second.final, listings[0].text)  # what the model read: title + variant
    assert np.abs(query - want).max() < 5e-4  # (the stored features are float16)
    packaged = extract_features(listings, config, progress=False, training=False)  # what it read before
    assert np.abs(query - encode_all(second.final, packaged).title_embedding[0].numpy()).max() > 5e-3


@pytest.mark.gpu
@gpu
def test_end_to_end_trains_on_cuda_in_bf16(catalogue):  # noqa: F811
    listings, config, _frozen, _raw, model, info = train(catalogue, device="cuda", steps=3)
    assert all(np.isfinite(v) for v in info["final_losses"].values())
    assert next(model.image_backbone.parameters()).device.type == "cuda"
    tuned = extract_features(
        listings, config, device="cuda", progress=False, training=False, backbones=model.backbones()
    )
    assert torch.isfinite(tuned.top.float()).all() and tuned.has_image.sum() == 9


@pytest.mark.gpu
@gpu
def test_cross_fitted_end_to_end_version_trains_validates_and_scores_on_cuda(catalogue, tmp_path):  # noqa: F811
    from ml_worker.ensemble import load_cross_fit, save_cross_fit

    listings = load_catalogue(catalogue)
    config = small_config()
    frozen = extract_features(listings, config, device="cuda", progress=False)
    raw = load_raw_inputs(listings, config, progress=False)

    def features_of(model):
        model.to("cuda")
        return extract_features(listings, config, device="cuda", progress=False, backbones=model.backbones())

    data = TrainingSet(
        frozen, [x.family for x in listings], [x.category for x in listings], raw=raw, features_of=features_of
    )
    train_config = TrainConfig(steps=3, folds=2, families_per_batch=3, listings_per_family=2)
    version, info = train_cross_fit(data, config, train_config, device="cuda", progress=False)
    assert all(np.isfinite(v) for v in info["final_losses"].values())
    save_cross_fit(version, tmp_path / "v")
    loaded = load_cross_fit(tmp_path / "v").final.to("cuda")
    tuned = extract_features(
        listings, config, device="cuda", progress=False, training=False, backbones=loaded.backbones()
    )
    out = encode_all(loaded, tuned, device="cuda")
    assert torch.isfinite(out.embedding).all() and out.embedding.shape[0] == len(listings)
