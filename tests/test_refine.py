"""Test-time refinement chain and tiled inference."""

import pytest
import torch
from torch import nn

from sipl.errors import SiplError
from sipl.models import build_model
from sipl.models.refine import refine
from sipl.models.tiling import tile_spans, tiled_map

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("nafnet", "tiny", sipl=True).eval()
    with torch.no_grad():  # a non-identity backbone so that the steps really differ
        for name, p in m.backbone.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.fill_(0.2)
    return m


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(0))


def test_step_zero_is_the_preliminary_restoration(model, image):
    steps = list(refine(model, image, 0))
    assert [s for s, _ in steps] == [0]
    with torch.no_grad():
        assert torch.allclose(steps[0][1], model(image).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("scheme", ["anchored", "official"])
def test_chain_yields_every_step_clipped(model, image, scheme):
    steps = list(refine(model, image, 3, scheme=scheme))
    assert [s for s, _ in steps] == [0, 1, 2, 3]
    for _, out in steps:
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(steps[0][1], steps[1][1])


def test_schemes_agree_at_step_one_and_differ_after(model, image):
    anchored = dict(refine(model, image, 2, scheme="anchored"))
    official = dict(refine(model, image, 2, scheme="official"))
    assert torch.allclose(anchored[1], official[1], atol=1e-6)
    assert (anchored[2] - official[2]).abs().max() > 1e-4


def test_chains_match_their_definitions(model, image):
    with torch.no_grad():
        state = model.encode(image)
        prev = model.decode(state).clamp(0, 1)
        anchored = [prev]
        for _ in range(2):
            prev = model.decode(state, model.encode_privileged(prev)).clamp(0, 1)
            anchored.append(prev)
        current, official = image, []
        for _ in range(2):
            preliminary = model(current).clamp(0, 1)
            current = model(current, privileged=model.encode_privileged(preliminary)).clamp(0, 1)
            official.append(current)
    for step, out in refine(model, image, 2, scheme="anchored"):
        assert torch.allclose(out, anchored[step], atol=1e-5)
    for step, out in refine(model, image, 2, scheme="official"):
        if step:
            assert torch.allclose(out, official[step - 1], atol=1e-5)


def test_plain_model_repeats_its_restoration(image):
    torch.manual_seed(0)
    plain = build_model("nafnet", "tiny", sipl=False).eval()
    outs = [out for _, out in refine(plain, image, 2)]
    assert len(outs) == 3 and all(torch.equal(outs[0], o) for o in outs)


def test_inference_mode_does_not_leak_to_the_caller(model, image):
    chain = refine(model, image, 2)
    next(chain)
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
    chain.close()


def test_bad_arguments_are_clear(model, image):
    with pytest.raises(SiplError, match="scheme"):
        list(refine(model, image, 1, scheme="loop"))
    with pytest.raises(SiplError, match="steps"):
        list(refine(model, image, -1))
    with pytest.raises(SiplError, match="N×3×H×W"):
        list(refine(model, image[0], 1))


# ------------------------------------------------------------------------------------------------ tiling

def test_tile_spans_cover_align_and_overlap():
    for length in (64, 65, 100, 129, 300):
        spans = tile_spans(length, 64, 16, align=8)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(s % 8 == 0 for s, _ in spans)
        assert all(a_end - b_start >= 16 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert tile_spans(50, 64, 16) == [(0, 50)]


class LocalModel(nn.Module):
    """A SIPL-shaped model with a small receptive field (3×3 convs only), so tiling can be exact."""

    sipl = True
    multiple = 1

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, padding=1)
        self.dec = nn.Conv2d(4, 3, 3, padding=1)
        self.priv = nn.Conv2d(3, 3, 3, padding=1)

    def encode(self, x):
        return torch.tanh(self.enc(x))

    def decode(self, state, privileged=None):
        out = 0.5 + 0.5 * torch.tanh(self.dec(state))
        return out if privileged is None else out + 0.3 * self.encode_privileged(privileged)

    def encode_privileged(self, image):
        return torch.tanh(self.priv(image))


@pytest.mark.parametrize("scheme", ["anchored", "official"])
def test_tiled_refine_equals_untiled_when_receptive_field_fits_the_overlap(scheme):
    # Official scheme, 3 steps: each step composes enc (r=1), dec (1), priv (1) twice -> radius <= 9 <= 48 // 4.
    torch.manual_seed(0)
    local = LocalModel().eval()
    x = torch.rand(1, 3, 100, 137)
    whole = [out for _, out in refine(local, x, 3, scheme=scheme)]
    tiled = [out for _, out in refine(local, x, 3, scheme=scheme, tile=64, tile_overlap=48)]
    assert len(tiled) == 4
    for a, b in zip(whole, tiled):
        assert (a - b).abs().max() < 1e-4


def test_tiled_map_blends_without_seams_for_pointwise_functions():
    x = torch.rand(2, 3, 70, 90)
    (out,) = tiled_map(lambda t: [t * 2 + 1], x, tile=32, overlap=8)
    assert torch.allclose(out, x * 2 + 1, atol=1e-5)


def test_tiled_sipl_model_runs_and_stays_close(model):
    # A real SIPL model has global operations (channel-attention pooling, dictionary attention over the whole
    # image), so tiles only approximate the whole-image chain; check shape, range and rough agreement.
    x = torch.rand(1, 3, 72, 88, generator=torch.Generator().manual_seed(3))
    whole = dict(refine(model, x, 1))
    tiled = dict(refine(model, x, 1, tile=48, tile_overlap=16))
    assert tiled[1].shape == x.shape and 0 <= tiled[1].min() and tiled[1].max() <= 1
    assert (whole[1] - tiled[1]).abs().mean() < 0.1


def test_bad_tiling_is_clear(model):
    with pytest.raises(SiplError, match="tile"):
        list(refine(model, torch.rand(1, 3, 80, 80), 1, tile=40, tile_overlap=40))
    with pytest.raises(SiplError, match="multiple of 8"):
        list(refine(model, torch.rand(1, 3, 80, 80), 1, tile=17, tile_overlap=16))
    # a tile that is not a multiple of the model's factor is rounded down (50 -> 48)
    assert tile_spans(80, 48, 8, align=8) == [(0, 48), (32, 80)]
    outs = dict(refine(model, torch.rand(1, 3, 80, 80), 1, tile=50, tile_overlap=8))
    assert outs[1].shape == (1, 3, 80, 80)
