"""The ONNX Runtime path matches eager PyTorch, caches its graphs, and `sipl restore` reports progress per tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sipl import restore
from sipl.errors import SiplError
from sipl.models import build_model
from sipl.models import onnx_engine
from sipl.models.refine import predict_degradation, refine
from sipl.models.runtime import for_inference
from sipl.models.tiling import tile_count

TOLERANCE = 1e-4  # measured differences are ~1e-6 (float32 rounding of a different operator order)
SMALL = {"width": 8, "enc_blocks": (1, 1, 1), "middle_blocks": 1, "dec_blocks": (1, 1, 1)}


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from the identity initialisation, so every branch (blocks, fusion, FiLM, affine) matters."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def head_model():
    return _randomised(build_model("nafnet", "tiny", degradation_classes=["clean", "noise", "rain"],
                                   global_affine=True, **SMALL))


@pytest.fixture(scope="module")
def head_runner(head_model):
    return for_inference(head_model, "onnx")


@pytest.mark.parametrize("size", [(40, 56), (37, 61), (64, 64)])
def test_passes_match_eager_on_any_size_and_batch(head_model, head_runner, size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        state = head_model.encode(x)
        eager0 = head_model.decode(state).clamp(0, 1)
        eager1 = head_model.decode(state, eager0).clamp(0, 1)
    fast_state = head_runner.encode(x)
    fast0 = head_runner.decode(fast_state)
    fast1 = head_runner.decode(fast_state, fast0)
    assert fast0.shape == x.shape and fast1.shape == x.shape
    assert (fast0 - eager0).abs().max() < TOLERANCE
    assert (fast1 - eager1).abs().max() < TOLERANCE
    assert (fast1 - fast0).abs().max() > 1e-3  # the privileged pass really differs from the dictionary-only one


@pytest.mark.parametrize("scheme", ["anchored", "official"])
def test_tiled_chain_matches_eager_when_size_is_not_a_multiple_of_the_tile(head_model, head_runner, scheme):
    x = torch.rand(1, 3, 83, 131, generator=torch.Generator().manual_seed(2))
    eager = [out for _, out in refine(head_model, x, 2, scheme=scheme, tile=48, tile_overlap=16)]
    fast = [out for _, out in refine(head_runner, x, 2, scheme=scheme, tile=48, tile_overlap=16)]
    assert len(fast) == 3
    for a, b in zip(eager, fast):
        assert (a - b).abs().max() < TOLERANCE
    last = list(refine(head_runner, x, 2, scheme=scheme, tile=48, tile_overlap=16, last_only=True))
    assert [step for step, _ in last] == [2] and (last[0][1] - fast[-1]).abs().max() < 1e-6


def test_plain_backbone_without_head_runs_through_onnx():
    model = _randomised(build_model("nafnet", "tiny", sipl=False, **SMALL))
    runner = for_inference(model, "onnx")
    x = torch.rand(1, 3, 30, 45, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        eager = model(x).clamp(0, 1)
    outputs = dict(refine(runner, x, 2))
    assert (outputs[0] - eager).abs().max() < TOLERANCE and torch.equal(outputs[2], outputs[0])
    with pytest.raises(SiplError, match="plain backbone"):
        runner.decode(runner.encode(x), x)


def test_classification_is_the_models_own(head_model, head_runner):
    image = (np.random.default_rng(4).random((50, 70, 3)) * 255).astype(np.uint8)
    assert predict_degradation(head_runner, image) == predict_degradation(head_model, image)


def test_graphs_are_exported_once_per_model_and_weights(head_model, head_runner, monkeypatch):
    def no_export(*_args, **_kwargs):
        raise AssertionError("graphs were exported again although the cache holds them")

    monkeypatch.setattr(onnx_engine, "export_graphs", no_export)
    again = onnx_engine.OnnxModel(head_model)
    assert again.folder == head_runner.folder
    changed = _randomised(build_model("nafnet", "tiny", degradation_classes=["clean", "noise", "rain"],
                                      global_affine=True, **SMALL))
    with torch.no_grad():
        changed.backbone.intro.bias.add_(0.5)
    assert onnx_engine.model_fingerprint(changed) != onnx_engine.model_fingerprint(head_model)


def test_a_damaged_cached_graph_is_exported_again(head_model, head_runner, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIPL_CACHE_DIR", str(tmp_path))
    folder = onnx_engine.cache_root() / onnx_engine.model_fingerprint(head_model)
    folder.mkdir(parents=True)
    for name in onnx_engine.GRAPHS:
        (folder / f"{name}.onnx").write_bytes(b"not a graph")
    capsys.readouterr()
    runner = onnx_engine.OnnxModel(head_model)
    said = capsys.readouterr().err
    assert f"the cached ONNX graphs in {folder} cannot be loaded (" in said and "re-exporting the model" in said, said
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    assert (runner.decode(runner.encode(x)) - head_runner.decode(head_runner.encode(x))).abs().max() < 1e-6


def test_engine_and_device_choices_are_checked(head_model):
    with pytest.raises(SiplError, match="unknown engine"):
        for_inference(head_model, "tensorrt")
    with pytest.raises(SiplError, match="runs on the CPU"):
        for_inference(head_model, "onnx", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(SiplError, match="--device cuda"):
            for_inference(head_model, "auto", "cuda")
    assert for_inference(head_model, "eager") is head_model


def test_restore_reports_an_estimate_and_moves_a_tile_bar(head_runner, tmp_path, capsys):
    image = (np.random.default_rng(6).random((150, 200, 3)) * 255).astype(np.uint8)
    source = tmp_path / "photo.png"
    from sipl.data.imageio import write_png_atomic

    write_png_atomic(image, source)
    plan = restore.plan([str(source)], tmp_path / "out")
    summary = restore.run_plan(head_runner, plan, 1, "anchored", tile=64, tile_overlap=16, progress=True)
    err = capsys.readouterr().err
    tiles = tile_count(150, 200, 64, 16, head_runner.multiple)
    assert tiles > 4
    assert f"[1/1] {source}: 200x150, {tiles} tile(s), 1 refinement step(s), about" in err
    bar = [part for part in err.replace("\r", "\n").splitlines() if f"/{tiles} [" in part]
    assert bar and ("tile/s]" in bar[-1] or "s/tile]" in bar[-1])  # a per-tile bar with a rate (and an ETA)
    assert summary["done"][0]["output"] == str(tmp_path / "out" / "photo.png") and not summary["failed"]


def test_chain_cost_model():
    assert [restore.chain_passes(k, "anchored") for k in range(4)] == [1, 2, 3, 4]
    assert [restore.chain_passes(k, "official") for k in range(4)] == [1, 2, 4, 6]
    assert restore.processed_megapixels(1024, 1024, None, 16, 8) == pytest.approx(1.048576)
    assert restore.processed_megapixels(1024, 1024, 512, 16, 8) < 1.2 * 1.048576
