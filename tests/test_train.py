"""Training loop without Ray (fast): loss goes down, export, resume, NaN stop, global-batch invariance, schedule,
losses, batch plan, and the ``sipl train`` command's checks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sipl.config import parse_params
from sipl.errors import SiplError
from sipl.training.launcher import export, make_spec
from sipl.training.loop import Throughput, train_worker
from sipl.training.losses import charbonnier, fft_l1, l1, pixel_loss
from sipl.training.schedule import batch_plan, learning_rate
from sipl.training.sessions import LocalSession
from sipl.training.step import _StepModule, accumulate_gradients
from tests.test_data import make_shards, tiny_params

torch.set_num_threads(1)
SMALL = {"width": 8, "middle_blocks": 1}


def _params(shard_root, **train):
    raw = tiny_params(shard_root, **train).model_dump(mode="json")
    raw["profiles"]["tiny"]["model"]["overrides"] = SMALL
    return parse_params(raw, source="test")


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("train") / "shards")


# ----------------------------------------------------------------------------------------------- pieces

def test_learning_rate_warmup_then_cosine():
    lrs = [learning_rate(s, 1e-3, 1e-5, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert learning_rate(100, 1e-3, 1e-5, 10, 100) == pytest.approx(1e-5)


def test_batch_plan():
    assert batch_plan(8, 2).worker_batch == 4 and batch_plan(8, 2).accumulation == 1
    plan = batch_plan(32, 2, max_worker_batch=6)
    assert (plan.worker_batch, plan.accumulation, plan.micro_batch) == (16, 4, 4)
    with pytest.raises(SiplError, match=r"train.global_batch=6 is not divisible by ray.num_workers=4"):
        batch_plan(6, 4, profile="tiny")


def test_losses():
    a, b = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)
    assert float(l1(a, b)) == pytest.approx(0.5)
    assert float(charbonnier(a, b)) == pytest.approx(0.5, abs=1e-5)
    assert float(fft_l1(a, a)) == 0.0 and float(fft_l1(a, b)) > 0
    combined = pixel_loss(1.0, 0.0, 0.1)
    assert float(combined(a, b)) == pytest.approx(0.5 + 0.1 * float(fft_l1(a, b)))
    with pytest.raises(ValueError, match="all 0"):
        pixel_loss(0, 0, 0)


def test_psnr_loss_is_the_mean_per_image_psnr():
    from sipl.training.losses import psnr_loss

    target = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scales = torch.tensor([0.01, 0.05, 0.2]).view(3, 1, 1, 1)
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * scales
    pred = target + noise
    per_image = -10 * torch.log10((pred - target).square().flatten(1).mean(1))
    assert float(psnr_loss(pred, target)) == pytest.approx(float(-per_image.mean() / 10), rel=1e-5)
    # a pooled loss is dominated by the worst image; this one weighs every image's PSNR equally
    weights = torch.autograd.functional.jacobian(lambda p: psnr_loss(p, target), pred).flatten(1).norm(dim=1)
    assert weights[0] > weights[2], "the cleaner image gets the larger gradient per unit error"
    assert float(pixel_loss(0, 0, 0, 0.1)(pred, target)) == pytest.approx(0.1 * float(psnr_loss(pred, target)))


def test_rmse_loss_pulls_every_image_equally_hard():
    from sipl.training.losses import rmse_loss

    target = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scales = torch.tensor([0.01, 0.05, 0.2]).view(3, 1, 1, 1)
    pred = target + torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * scales
    per_image = (pred - target).square().flatten(1).mean(1).sqrt()
    assert float(rmse_loss(pred, target)) == pytest.approx(float(per_image.mean()), rel=1e-5)
    # d sqrt(mean(e^2)) / de = e / (n * rmse): norm 1 / (images * sqrt(n)) for every image, whatever its error
    norms = torch.autograd.functional.jacobian(lambda p: rmse_loss(p, target), pred).flatten(1).norm(dim=1)
    expected = 1 / (3 * (3 * 16 * 16) ** 0.5)
    assert norms.tolist() == pytest.approx([expected] * 3, rel=1e-4)
    assert float(pixel_loss(0, 0, 0, 0, 0.5)(pred, target)) == pytest.approx(0.5 * float(rmse_loss(pred, target)))


def test_throughput_leaves_out_the_first_step_once_there_is_another():
    meter = Throughput()
    assert meter.samples_per_s() == 0.0
    meter.add(8, 4.0)  # start-up: shuffle buffer, DDP buckets
    assert meter.samples_per_s() == pytest.approx(2.0)
    meter.add(8, 0.5)
    meter.add(8, 0.5)
    assert meter.samples_per_s() == pytest.approx(16.0)


@pytest.mark.parametrize("options", [
    {"preliminary_weight": 0.5, "random_proxy": False},
    # every random choice of the step drawn from the step's seed: the same on every micro-batch and every rank
    {"preliminary_weight": 0.5, "random_proxy": True, "self_privileged": 0.5, "preliminary_share": 0.5},
], ids=["official", "stochastic-options"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous-loop", "channels_last-fused"])
def test_global_batch_invariance(options, channels_last):
    """1 worker × 2 accumulated micro-batches == 2 workers × 1 micro-batch (all-reduce = mean of gradients), in
    either memory layout and optimiser kernel of the trainer."""
    from sipl.models import build_model
    from sipl.training.step import to_memory_format

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    fused = True if channels_last else None
    torch.manual_seed(0)
    model = to_memory_format(build_model("nafnet", "tiny", sipl=True, **SMALL), memory_format)
    rng = np.random.default_rng(0)
    batch = {k: torch.from_numpy(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)) for k in ("lq", "gt")}
    halves = [{k: v[i * 2:(i + 1) * 2] for k, v in batch.items()} for i in range(2)]
    one = batch_plan(4, 1, max_worker_batch=2)
    two = batch_plan(4, 2)
    assert one.accumulation == 2 and one.micro_batch == two.micro_batch == 2

    single = copy.deepcopy(model)
    cpu = torch.device("cpu")
    accumulate_gradients(_StepModule(single, l1, **options), halves, cpu, step_seed=7, memory_format=memory_format)
    replicas = [copy.deepcopy(model) for _ in range(2)]
    for replica, half in zip(replicas, halves):
        accumulate_gradients(_StepModule(replica, l1, **options), [half], cpu, step_seed=7,
                             memory_format=memory_format)
    for p_single, p_a, p_b in zip(single.parameters(), *(r.parameters() for r in replicas)):
        if p_single.grad is None:
            assert p_a.grad is None and p_b.grad is None
            continue
        torch.testing.assert_close(p_single.grad, (p_a.grad + p_b.grad) / 2, rtol=1e-4, atol=1e-6)
    # and the same first update
    opt_single = torch.optim.AdamW(single.parameters(), lr=1e-3, fused=fused)
    opt_single.step()
    averaged = copy.deepcopy(model)
    for p, p_a, p_b in zip(averaged.parameters(), *(r.parameters() for r in replicas)):
        p.grad = None if p_a.grad is None else (p_a.grad + p_b.grad) / 2
    torch.optim.AdamW(averaged.parameters(), lr=1e-3, fused=fused).step()
    for a, b in zip(single.parameters(), averaged.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------- loop

def test_training_decreases_loss_and_exports(shard_root, tmp_path):
    params = _params(shard_root, steps=14, checkpoint_every=7, val_every=7, ema_decay=0.5)
    session = LocalSession(tmp_path / "ckpt")
    metrics = train_worker(make_spec(params, num_workers=1), 0, 1, session)
    assert metrics["step"] == 14 and "failed" not in metrics
    history = [r for r in metrics_history(session)]
    assert np.mean([r["loss"] for r in history[-2:]]) < np.mean([r["loss"] for r in history[:2]])
    assert [p.name for p in sorted((tmp_path / "ckpt").iterdir())] == ["checkpoint_00000007", "checkpoint_00000014"]
    summary = export(session.latest_checkpoint(), tmp_path / "out", params)
    assert summary["steps"] == 14 and summary["samples_per_s"] > 0 and summary["skipped_samples"] == 0
    assert set(summary["val"]) == {"denoise", "lowlight"}
    assert set(summary["val"]["denoise"]) >= {"psnr", "input_psnr"}
    saved = json.loads((tmp_path / "out" / "metrics" / "train.json").read_text())
    assert saved == summary
    csv = (tmp_path / "out" / "plots" / "train.csv").read_text().splitlines()
    columns = csv[0].split(",")
    assert columns[:2] == ["step", "loss"] and len(csv) >= 5
    assert {"loss_main", "loss_preliminary", "lr", "val_psnr"} <= set(columns)
    from sipl.models.files import load_model

    model, meta = load_model(tmp_path / "out" / "models")
    assert meta["weights"] == "ema" and meta["training"]["steps"] == 14 and meta["profile"] == "tiny"


def metrics_history(session):
    from sipl.training.checkpoint import read_training_state

    return read_training_state(session.latest_checkpoint())[1]["history"]


def test_resume_continues_from_saved_step(shard_root, tmp_path):
    params = _params(shard_root, steps=6, checkpoint_every=3)
    spec = make_spec(params, num_workers=1)
    session = LocalSession(tmp_path / "ckpt")
    first = train_worker({**spec, "stop_at_step": 3}, 0, 1, session)
    assert first["step"] == 3
    second_session = LocalSession(tmp_path / "ckpt")
    final = train_worker(spec, 0, 1, second_session)
    assert final["step"] == 6 and final["summary"]["resumed_from"] == [3]
    assert [r["step"] for r in metrics_history(second_session)] == [2, 3, 4, 6]
    # a finished run restarted only re-reports its final state
    again = train_worker(spec, 0, 1, LocalSession(tmp_path / "ckpt"))
    assert again["step"] == 6 and again["summary"]["steps"] == 6


def test_nan_loss_stops_with_step_and_keys(shard_root, tmp_path, monkeypatch):
    calls = {"n": 0}

    def exploding(pred, target):
        calls["n"] += 1  # call 1 is the probe for unused parameters, then one call per step
        value = (pred - target).abs().mean()
        return value * float("nan") if calls["n"] > 5 else value

    monkeypatch.setattr("sipl.training.losses.from_config", lambda cfg: exploding)
    params = _params(shard_root, steps=6, checkpoint_every=1, loss={"l1": 1.0, "preliminary": 0.0})
    session = LocalSession(tmp_path / "ckpt")
    metrics = train_worker(make_spec(params, num_workers=1), 0, 1, session)
    assert "non-finite loss" in metrics["failed"] and "at step 5" in metrics["failed"]
    assert "last good checkpoint is kept (step 4)" in metrics["failed"]
    assert "__" in metrics["failed"].split("batch samples: ")[1]
    assert session.latest_checkpoint().name == "checkpoint_00000004"


def test_preliminary_share_and_ground_truth_features_train(shard_root, tmp_path):
    params = _params(shard_root, steps=2, checkpoint_every=2, preliminary_share=0.5,
                     privileged_source="ground_truth")
    metrics = train_worker(make_spec(params, num_workers=1), 0, 1, LocalSession(tmp_path / "ckpt"))
    assert metrics["step"] == 2 and "failed" not in metrics
    assert all(r["loss_preliminary"] > 0 for r in metrics_history(LocalSession(tmp_path / "ckpt")))


def test_preliminary_share_needs_two_samples_per_worker(shard_root):
    params = _params(shard_root, global_batch=2, preliminary_share=0.5)
    with pytest.raises(SiplError, match=r"profiles\.tiny\.preliminary_share=0\.5 .* worker batch here is 1"):
        make_spec(params, num_workers=2)


# -------------------------------------------------------------------------------------------------- CLI

def _write_params(tmp_path, params):
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


def test_cli_check_and_errors(shard_root, tmp_path, capsys):
    from sipl.cli import main

    path = _write_params(tmp_path, _params(shard_root))
    assert main(["train", "--params", str(path), "--check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"]["worker_batch"] == 2 and report["train_shards"] == {"denoise": 2, "lowlight": 2}

    assert main(["train", "--params", str(path), "--check", "--workers", "3"]) == 2
    assert "global_batch=4 is not divisible by ray.num_workers=3" in capsys.readouterr().err

    raw = _params(shard_root).model_dump(mode="json")
    raw["tasks"]["derain"] = {"family": "rain", "steps": [{"name": "rain"}]}
    path = _write_params(tmp_path, parse_params(raw))
    assert main(["train", "--params", str(path), "--check"]) == 2
    assert "task 'derain' has no train shards" in capsys.readouterr().err


def test_root_message_skips_quoted_source_lines():
    from sipl.training.launcher import _root_message

    text = ("Training failed due to worker errors:\n"
            "    self._handler(task)(SiplError(f\"sample {item.get('__key__')}: {error}\"))\n"
            "sipl.errors.SiplError: task 'denoise': corrupt shard data (sample denoise__train5__000)\n")
    assert _root_message(RuntimeError(text)) == "task 'denoise': corrupt shard data (sample denoise__train5__000)"
    assert _root_message(RuntimeError("worker died\nexit code 9")) == "exit code 9"


# ---------------------------------------------------------------------------------------- initial weights

def test_init_weights_start_training_from_an_exported_model(shard_root, tmp_path):
    """A run with ``init_weights`` starts from that model: its first validation sees the exported weights' quality,
    and the weights' bytes are part of the fingerprint."""
    from sipl.models.files import load_model

    params = _params(shard_root, steps=4, checkpoint_every=4, val_every=4)
    session = LocalSession(tmp_path / "first")
    train_worker(make_spec(params, num_workers=1), 0, 1, session)
    export(session.latest_checkpoint(), tmp_path / "first_out", params)
    folder = tmp_path / "first_out" / "models"
    exported, _ = load_model(folder)

    tuned = _params(shard_root, steps=1, checkpoint_every=1, val_every=1, lr=1e-12, min_lr=0.0, warmup_steps=0,
                    init_weights=str(folder))
    spec = make_spec(tuned, num_workers=1)
    assert spec["init_weights"] == str((folder / "model.safetensors").resolve())
    assert spec["fingerprint"] != make_spec(_params(shard_root, steps=1, checkpoint_every=1, val_every=1, lr=1e-12,
                                                    min_lr=0.0, warmup_steps=0), num_workers=1)["fingerprint"]
    tuned_session = LocalSession(tmp_path / "tuned")
    train_worker(spec, 0, 1, tuned_session)
    export(tuned_session.latest_checkpoint(), tmp_path / "tuned_out", tuned)
    model, _ = load_model(tmp_path / "tuned_out" / "models")
    # one step at lr 1e-12 leaves the starting weights where they were
    for name, tensor in exported.state_dict().items():
        assert torch.allclose(model.state_dict()[name], tensor, atol=1e-6), name


def test_init_weights_of_another_model_is_a_clear_error_naming_file_and_key(shard_root, tmp_path):
    from safetensors.torch import load_file, save_file

    from sipl.models import build_model
    from sipl.models.files import save_model

    params = _params(shard_root)
    other = build_model(**params.model.build_arguments(tasks=list(params.tasks)))
    save_model(other, tmp_path / "good")
    state = load_file(str(tmp_path / "good" / "model.safetensors"))
    name = sorted(state)[0]
    missing = dict(state)
    del missing[name]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(SiplError, match=rf"init_weights: .*missing.safetensors lacks the tensor '{name}'"):
        make_spec(_params(shard_root, init_weights=str(tmp_path / "missing.safetensors")), num_workers=1)
    wrong = dict(state)
    wrong[name] = torch.zeros(tuple(state[name].shape) + (2,))
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(SiplError, match=rf"wrong.safetensors tensor '{name}' has shape"):
        make_spec(_params(shard_root, init_weights=str(tmp_path / "wrong.safetensors")), num_workers=1)
    with pytest.raises(SiplError, match="init_weights: .*nowhere is neither a .safetensors file nor a model folder"):
        make_spec(_params(shard_root, init_weights=str(tmp_path / "nowhere")), num_workers=1)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(SiplError, match="junk.safetensors is not a readable safetensors file"):
        make_spec(_params(shard_root, init_weights=str(tmp_path / "junk.safetensors")), num_workers=1)
