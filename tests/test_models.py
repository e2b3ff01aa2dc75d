"""Backbones and the SIPL wrapper on tiny configs (CPU, seconds); paper sizes only for parameter counts."""

import json

import pytest
import torch

from sipl.models import BACKBONES, build_model
from sipl.models.proxy_fusion import dictionary_parameters
from sipl.models.sipl import dictionary_only_count

torch.set_num_threads(1)

# Published / reconstructed counts (docs/model.md): PromptIR's release defines 215,296 parameters it never uses.
PROMPTIR_PAPER_PLAIN = 35_376_967
PROMPTIR_UNUSED = 215_296
PROMPTIR_PAPER_SIPL = 40_028_562


def l1(a, b):
    return (a - b).abs().mean()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {(name, sipl): build_model(name, "tiny", sipl=sipl).eval() for name in BACKBONES for sipl in (True, False)}


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("sipl", [True, False])
def test_odd_sizes_keep_shape(tiny_models, name, sipl):
    model = tiny_models[(name, sipl)]
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        y = model(x)
        y_priv = model(x, privileged=x)
    assert y.shape == x.shape and y_priv.shape == x.shape
    assert torch.isfinite(y).all()
    if sipl:
        assert not torch.allclose(y, y_priv), "privileged features must change the SIPL output"
    else:
        assert torch.equal(y, y_priv), "a plain backbone ignores privileged input"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_encoder_features_match_fusion_levels(tiny_models, name):
    model = tiny_models[(name, True)]
    features = model.encode_privileged(torch.rand(1, 3, 37, 53))
    assert [f.shape[1] for f in features] == list(model.backbone.fusion_channels)
    # enc level 2, enc level 3, latent of the input padded to 40×56: H/2, H/4, H/8
    assert [tuple(f.shape[-2:]) for f in features] == [(20, 28), (10, 14), (5, 7)]


def test_encoder_state_is_reusable(tiny_models):
    model = tiny_models[("nafnet", True)]
    x, other = torch.rand(1, 3, 24, 40), torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        state = model.encode(x)
        privileged = model.encode_privileged(other)
        assert torch.allclose(model.decode(state), model(x), atol=1e-6)
        assert torch.allclose(model.decode(state, privileged), model(x, privileged=other), atol=1e-6)
        assert torch.allclose(model.decode(state, privileged), model(x, privileged=privileged), atol=1e-6)


def test_config_round_trip_through_json():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, width=8, dict_sizes=(4, 4, 4))
    config = json.loads(json.dumps(model.config))
    assert config == {"backbone": "nafnet", "size": "tiny", "sipl": True, "width": 8, "dict_sizes": [4, 4, 4]}
    rebuilt = build_model(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert rebuilt.fusion[0].dictionary.shape == (1, 16, 4, 4)


def test_unknown_names_are_reported():
    with pytest.raises(ValueError, match="allowed"):
        build_model("nafnet", "tiny", widht=8)
    with pytest.raises(ValueError, match="available"):
        build_model("unet", "tiny")
    with pytest.raises(ValueError, match="available"):
        build_model("nafnet", "huge")


def test_training_step_terms_and_official_semantics():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model.training_step(lq, gt, l1, preliminary_weight=0.5)
    assert set(out) == {"loss", "main", "preliminary"}
    assert torch.allclose(out["loss"], out["main"] + 0.5 * out["preliminary"])
    with torch.no_grad():
        privileged = model.encode_privileged(model(gt).clamp(0, 1))
        expected_main = l1(model(lq, privileged=privileged), gt)
        expected_prelim = l1(model(lq), gt)
    assert torch.allclose(out["main"], expected_main, atol=1e-6)
    assert torch.allclose(out["preliminary"], expected_prelim, atol=1e-6)
    official = model.training_step(lq, gt, l1, preliminary_weight=0.0)
    assert set(official) == {"loss", "main"} and torch.equal(official["loss"], official["main"])


@pytest.mark.parametrize("preliminary_weight", [0.5, 0.0])
def test_self_privileged_step_uses_the_test_time_features(preliminary_weight):
    """With self_privileged=1 the fused pass sees features of the model's own preliminary restoration of lq, as a
    refinement step does at test time; with 0 it sees those of its restoration of gt (official)."""
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model.training_step(lq, gt, l1, preliminary_weight=preliminary_weight, self_privileged=1.0)
    with torch.no_grad():
        preliminary = model(lq)
        own = l1(model(lq, privileged=model.encode_privileged(preliminary.clamp(0, 1))), gt)
        official = l1(model(lq, privileged=model.encode_privileged(model(gt).clamp(0, 1))), gt)
    assert torch.allclose(out["main"], own, atol=1e-6) and not torch.allclose(out["main"], official, atol=1e-6)
    if preliminary_weight:
        assert torch.allclose(out["preliminary"], l1(preliminary, gt), atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.fusion.parameters())


def test_ground_truth_privileged_source_uses_the_encoder_features_of_gt():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model.training_step(lq, gt, l1, preliminary_weight=0.0, privileged_source="ground_truth")
    with torch.no_grad():
        expected = l1(model(lq, privileged=model.encode_privileged(gt)), gt)
        official = l1(model(lq, privileged=model.encode_privileged(model(gt).clamp(0, 1))), gt)
    assert torch.allclose(out["main"], expected, atol=1e-6) and not torch.allclose(out["main"], official, atol=1e-6)
    with pytest.raises(ValueError, match="privileged_source"):
        model.training_step(lq, gt, l1, privileged_source="teacher")


@pytest.mark.parametrize("source", ["restoration", "ground_truth"])
def test_preliminary_share_splits_one_decoder_pass(source):
    """With a share, a random subset of the batch takes the dictionary-only path inside the fused decoder pass: its
    loss is the preliminary restoration's loss on those samples, the rest get the official main loss."""
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True)
    lq, gt = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    out = model.training_step(lq, gt, l1, preliminary_weight=0.5, privileged_source=source, preliminary_share=0.5,
                              generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    count = dictionary_only_count(4, 0.5, generator)
    order = torch.randperm(4, generator=generator)
    prelim, fused = order[:count], order[count:]
    with torch.no_grad():
        source_image = gt[fused] if source == "ground_truth" else model(gt[fused]).clamp(0, 1)
        expected_main = l1(model(lq[fused], privileged=model.encode_privileged(source_image)), gt[fused])
        expected_prelim = l1(model(lq[prelim]), gt[prelim])
    assert torch.allclose(out["main"], expected_main, atol=1e-5)
    assert torch.allclose(out["preliminary"], expected_prelim, atol=1e-5)
    assert torch.allclose(out["loss"], out["main"] + 0.5 * out["preliminary"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dictionary_only_count_keeps_both_paths_and_the_expected_share():
    generator = torch.Generator().manual_seed(0)
    counts = [dictionary_only_count(8, 0.3, generator) for _ in range(4000)]
    assert min(counts) >= 1 and max(counts) <= 7
    assert abs(sum(counts) / len(counts) / 8 - 0.3) < 0.01
    assert {dictionary_only_count(2, 0.9, generator) for _ in range(20)} == {1}
    with pytest.raises(ValueError, match="at least 2 samples"):
        dictionary_only_count(1, 0.5)
    with pytest.raises(ValueError, match="strictly between"):
        dictionary_only_count(4, 1.0)


def test_partial_privileged_batch_must_match():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        state = model.encode(x)
        features = model.encode_privileged(x[1:])
        mixed = model.decode(state, features, dictionary_only=1)
        assert torch.allclose(mixed[:1], model(x[:1]), atol=1e-5)
        assert torch.allclose(mixed[1:], model(x[1:], privileged=features), atol=1e-5)
        with pytest.raises(ValueError, match="cover 2 samples; expected 1"):
            model.decode(state, features, dictionary_only=2)


def test_output_init_starts_near_the_identity():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, output_init=1e-3)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert (model(x) - x).abs().max() < 1e-2
    assert model.config["output_init"] == 1e-3


def test_output_bias_off_has_no_constant_output_offset():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, output_bias=False)
    assert model.backbone.ending.bias is None and "backbone.ending.bias" not in model.state_dict()
    assert model.config["output_bias"] is False
    # the last conv is then linear in its features: zero features give exactly zero residual, whatever the weights
    features = torch.zeros(1, model.backbone.ending.in_channels, 8, 8)
    assert torch.equal(model.backbone.ending(features), torch.zeros(1, 3, 8, 8))
    biased = build_model("nafnet", "tiny", sipl=True)
    assert biased.backbone.ending.bias is not None


def test_plain_training_step():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=False)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model.training_step(lq, gt, l1, preliminary_weight=0.5)
    assert set(out) == {"loss", "main"}
    assert torch.allclose(out["loss"], l1(model(lq), gt))


@pytest.mark.parametrize("random_proxy", [False, True])
def test_gradients_reach_every_dictionary_and_fusion_parameter(random_proxy):
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True)
    # Non-trivial backbone (NAFNet's β/γ start at 0, which would make the blocks identities).
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.fill_(0.1)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = model.training_step(lq, gt, l1, preliminary_weight=0.5, random_proxy=random_proxy,
                              generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    fusion = dict(model.fusion.named_parameters())
    assert len(fusion) > 0
    missing = [n for n, p in fusion.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for fusion parameters {missing}"
    assert all(model.fusion[i].dictionary.grad.abs().sum() > 0 for i in range(3))


def test_zero_dictionary_is_official_option():
    model = build_model("nafnet", "tiny", sipl=True, dict_init="zeros")
    assert all(torch.count_nonzero(f.dictionary) == 0 for f in model.fusion)
    with pytest.raises(ValueError, match="dict_init"):
        build_model("nafnet", "tiny", sipl=True, dict_init="ones")


def test_deterministic_under_fixed_seed():
    x = torch.rand(1, 3, 29, 31, generator=torch.Generator().manual_seed(1))
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model("promptir", "tiny", sipl=True).eval()
        with torch.no_grad():
            outs.append(model(x, privileged=x))
    assert torch.equal(outs[0], outs[1])


def test_paper_parameter_counts():
    plain_model = build_model("promptir", "paper", sipl=False)
    sipl = build_model("promptir", "paper", sipl=True)
    restormer = build_model("restormer", "paper", sipl=False)
    plain = n_params(plain_model)
    assert plain == PROMPTIR_PAPER_PLAIN
    assert abs((plain + PROMPTIR_UNUSED) / 1e6 - 35.59) < 0.005  # the published count includes the unused layers
    assert n_params(sipl) == PROMPTIR_PAPER_SIPL
    assert abs(n_params(sipl) / 40.03e6 - 1) < 0.005
    assert dictionary_parameters((96, 192, 384), (64, 32, 16)) == 688_128
    assert sum(p.numel() for p in sipl.fusion.parameters()) == 4_651_595
    assert abs(n_params(restormer) / 26.13e6 - 1) < 0.005


# ------------------------------------------------------------------------------------------ degradation head

HEAD_CLASSES = ["clean", "denoise", "dehaze"]


@pytest.mark.parametrize("sipl", [True, False])
def test_degradation_head_starts_as_the_identity_of_the_model_without_it(sipl):
    torch.manual_seed(0)
    plain = build_model("nafnet", "tiny", sipl=sipl)
    torch.manual_seed(0)
    headed = build_model("nafnet", "tiny", sipl=sipl, degradation_classes=HEAD_CLASSES, global_affine=True)
    headed.load_state_dict(plain.state_dict(), strict=False)  # same backbone and fusion weights
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        assert torch.allclose(plain(x), headed(x), atol=1e-6)
        probabilities = headed.classify(x)
    assert probabilities.shape == (2, len(HEAD_CLASSES))
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))


def test_degradation_head_learns_the_labels_and_reaches_the_output():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, degradation_classes=HEAD_CLASSES, global_affine=True)
    from sipl.training.losses import l1

    dark, noisy = torch.rand(4, 3, 32, 32) * 0.1, (0.5 + 0.3 * torch.randn(4, 3, 32, 32)).clamp(0, 1)
    lq = torch.cat([dark, noisy])
    labels = torch.tensor([2] * 4 + [1] * 4)
    out = model.training_step(lq, lq, l1, labels=labels, degradation_weight=1.0, preliminary_share=0.5,
                              generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "main", "preliminary", "degradation", "affine"}
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.training_step(lq, lq, l1, labels=labels, degradation_weight=1.0)["degradation"]
        loss.backward()
        optimizer.step()
    assert model.classify(lq).argmax(dim=1).tolist() == labels.tolist()
    # the gain and bias are trained by the pixel loss too: they got a gradient
    model.zero_grad()
    model.training_step(lq, (lq * 1.5).clamp(0, 1), l1, labels=labels)["loss"].backward()
    assert model.head.affine.weight.grad.abs().sum() > 0


def test_degradation_head_config_round_trip_and_errors():
    model = build_model("nafnet", "tiny", degradation_classes=HEAD_CLASSES, global_affine=True)
    rebuilt = build_model(**json.loads(json.dumps(model.config)))
    assert rebuilt.degradation_classes == HEAD_CLASSES
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="global_affine needs degradation_classes"):
        build_model("nafnet", "tiny", global_affine=True)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("nafnet", "tiny", degradation_classes=["clean"])


def test_head_step_trains_only_the_head():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, degradation_classes=HEAD_CLASSES, global_affine=True)
    from sipl.training.losses import l1

    lq = torch.rand(3, 3, 16, 16)
    terms = model.head_step(lq, (lq * 1.2).clamp(0, 1), torch.tensor([0, 1, 2]), l1, 1.0, 1.0)
    assert set(terms) == {"head_degradation", "head_affine", "head_loss"}
    terms["head_loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.affine.weight.grad.abs().sum() > 0


def test_restoration_loss_does_not_train_the_global_affine():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", sipl=True, degradation_classes=HEAD_CLASSES, global_affine=True)
    from sipl.training.losses import l1

    lq = torch.rand(2, 3, 16, 16)
    model.training_step(lq, (lq * 1.3).clamp(0, 1), l1, labels=torch.tensor([0, 2]), affine_weight=0.0)["loss"].backward()
    assert model.head.affine.weight.grad is None or model.head.affine.weight.grad.abs().sum() == 0
    model.zero_grad()
    model.training_step(lq, (lq * 1.3).clamp(0, 1), l1, labels=torch.tensor([0, 2]))["loss"].backward()
    assert model.head.affine.weight.grad.abs().sum() > 0


def test_affine_min_confidence_keeps_unsure_inputs_free_of_the_global_correction():
    torch.manual_seed(0)
    model = build_model("nafnet", "tiny", degradation_classes=HEAD_CLASSES, global_affine=True,
                        affine_min_confidence=0.9).eval()
    with torch.no_grad():
        model.head.affine.bias.fill_(1.0)  # every class: a large gain and bias
        model.head.classify.weight.zero_()
        model.head.classify.bias.zero_()  # uniform probabilities: unsure
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        unsure = model.head(x)
        assert unsure.gain.abs().max() == 0 and unsure.bias.abs().max() == 0
        model.head.classify.bias.copy_(torch.tensor([0.0, 9.0, 0.0]))  # sure it is class 1
        sure = model.head(x)
        assert sure.gain.abs().min() > 0
        # known classes (training) are never gated
        assert model.head(x, torch.tensor([[1.0, 0.0, 0.0]])).gain.abs().min() > 0


def test_layer_norm_keeps_the_input_memory_format():
    from sipl.models.common import LayerNorm2d

    norm = LayerNorm2d(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 5, 7)
    plain, last = norm(x), norm(x.contiguous(memory_format=torch.channels_last))
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    # a broadcast view of a channels_last map (the dictionary expanded over the batch) counts as channels_last
    broadcast = norm(x[:1].contiguous(memory_format=torch.channels_last).expand(2, -1, -1, -1))
    assert broadcast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(broadcast, norm(x[:1]).expand(2, -1, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(plain, last, rtol=0, atol=0)
    reference = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + norm.eps)
    torch.testing.assert_close(plain, reference * norm.weight[:, None, None] + norm.bias[:, None, None])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_channels_last_model_stays_channels_last_and_matches(name):
    """A model and input in channels_last restore the same image as in N×C×H×W, and every LayerNorm2d sees a map
    whose channels are the innermost axis (none falls back to N×C×H×W and pays the copies, the slower convolutions
    and, in the fusion blocks, attention by batched matmuls instead of the fused kernel)."""
    from sipl.models.common import LayerNorm2d
    from sipl.training.step import to_memory_format

    torch.manual_seed(0)
    model = build_model(name, "tiny", sipl=True).eval()
    x = torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        expected = model(x, privileged=x)
        to_memory_format(model, torch.channels_last)
        layouts = {}
        hooks = [m.register_forward_pre_hook(lambda m, args, name=name: layouts.setdefault(name, []).append(
            args[0].stride(1) == 1)) for name, m in model.named_modules() if isinstance(m, LayerNorm2d)]
        last = x.contiguous(memory_format=torch.channels_last)
        got = model(last, privileged=last)
    for hook in hooks:
        hook.remove()
    assert layouts and [name for name, seen in layouts.items() if not all(seen)] == []
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
