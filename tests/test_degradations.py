"""Tests of the degradations package: recipes (noise, haze, blur, low light), the registry contract, composites."""

import json
import math

import numpy as np
import pytest
import yaml

import degradations
from degradations import CDD11, REGISTRY, DegradationError, apply
from degradations._core import linear_to_srgb, luminance, srgb_to_linear
from degradations.blur import rasterise, trajectory
from degradations.depth import DEPTH_PROXIES
from degradations.haze import transmission
from sipl.errors import SiplError
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A small natural RGB crop, uint8 48×40×3 (non-square on purpose)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:292:4, 150:310:4])


def _strict_json(value) -> bool:
    """True when ``value`` holds only plain Python JSON types (no NumPy scalars or arrays)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _strict_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_strict_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


# ------------------------------------------------------------------------------------------------ noise

@pytest.mark.parametrize("sigma", [15.0, 25.0])
def test_noise_std_matches_sigma_on_mid_grey(sigma):
    grey = np.full((128, 128, 3), 128, np.uint8)
    out, applied = degradations.gaussian_noise(grey, np.random.default_rng(1), sigma=sigma, quantize="round")
    residual = out.astype(np.float64) - 128.0
    assert applied["sigma"] == sigma
    assert abs(residual.std() - sigma) < 0.02 * sigma
    assert abs(residual.mean()) < 4 * sigma / math.sqrt(residual.size)  # unbiased within 4 standard errors


def test_noise_truncation_biases_half_a_level_below_rounding():
    grey = np.full((128, 128, 3), 128, np.uint8)
    trunc, _ = degradations.gaussian_noise(grey, np.random.default_rng(3), sigma=25, quantize="truncate")
    rounded, _ = degradations.gaussian_noise(grey, np.random.default_rng(3), sigma=25, quantize="round")
    step = rounded.astype(np.int16) - trunc.astype(np.int16)
    assert set(np.unique(step)) <= {0, 1}
    assert 0.48 < step.mean() < 0.52  # same noise, so the offset is measured without sampling error


def test_noise_float_input_matches_its_uint8_twin(photo):
    as_float = photo.astype(np.float32) / 255.0
    out_u8, _ = degradations.gaussian_noise(photo, np.random.default_rng(5), sigma=50)
    out_f, _ = degradations.gaussian_noise(as_float, np.random.default_rng(5), sigma=50)
    assert out_f.dtype == np.float32
    np.testing.assert_array_equal(np.rint(out_f * 255).astype(np.uint8), out_u8)


def test_noise_sigma_range_is_drawn_and_recorded():
    grey = np.full((8, 8, 3), 128, np.uint8)
    sigmas = {degradations.gaussian_noise(grey, np.random.default_rng(s), sigma=[10, 20])[1]["sigma"]
              for s in range(20)}
    assert len(sigmas) == 20 and all(10 <= s <= 20 for s in sigmas)


# ------------------------------------------------------------------------------------------------- haze

def test_transmission_decreases_with_depth_and_beta():
    depth = np.linspace(0, 20, 50, dtype=np.float32)
    t = transmission(depth, 0.1)
    assert t[0] == pytest.approx(1.0) and np.all(np.diff(t) < 0)
    assert np.all(transmission(depth[1:], 0.2) < transmission(depth[1:], 0.1))


def test_haze_output_is_monotone_in_real_depth():
    """The Middlebury motorcycle disparity (scikit-image) as inverse depth: on a flat dark scene, a farther pixel
    is never less hazy (closer to the bright airlight)."""
    from skimage import data

    _, _, disparity = data.stereo_motorcycle()
    disparity = disparity[::8, ::8]
    focal, baseline, doffs = 994.978, 193.001, 31.086  # calibration from the scikit-image docstring
    depth = np.where(np.isfinite(disparity), focal * baseline / (disparity + doffs), np.nan)
    flat = np.full(depth.shape + (3,), 0.2, np.float32)
    out, applied = degradations.haze(flat, np.random.default_rng(0), depth_map=depth, beta=0.15, airlight=0.9)
    assert applied["depth"] == "given"
    finite = np.isfinite(depth)
    order = np.argsort(depth[finite], kind="stable")
    values = out[..., 0][finite][order]
    assert np.all(np.diff(values) >= -1e-6)
    assert values[-1] - values[0] > 0.3
    # pixels without ground truth count as farthest
    assert out[..., 0][~finite].min() >= values.max() - 1e-6


def test_haze_grows_with_beta(photo):
    scores = []
    for beta in (0.02, 0.08, 0.2):
        out, _ = degradations.haze(photo, np.random.default_rng(7), beta=beta, airlight=0.9)
        diff = np.abs(out.astype(np.float64) - photo).mean()
        scores.append((diff, out.astype(np.float64).std()))
    assert scores[0][0] < scores[1][0] < scores[2][0]  # farther from the clean image
    assert scores[0][1] > scores[1][1] > scores[2][1]  # lower contrast


@pytest.mark.parametrize("proxy", sorted(DEPTH_PROXIES))
def test_depth_proxies_are_relative_depth_maps(photo, proxy):
    image = photo.astype(np.float32) / 255
    d1, info = DEPTH_PROXIES[proxy](image, np.random.default_rng(2))
    d2, _ = DEPTH_PROXIES[proxy](image, np.random.default_rng(2))
    assert d1.shape == photo.shape[:2] and d1.dtype == np.float32
    assert d1.min() >= 0 and d1.max() <= 1 and d1.std() > 0.01
    np.testing.assert_array_equal(d1, d2)
    assert _strict_json(info)


def test_ground_plane_puts_the_sky_farther_than_the_ground(photo):
    depth, _ = DEPTH_PROXIES["ground_plane"](np.zeros((64, 64, 3), np.float32), np.random.default_rng(0))
    assert depth[:8].mean() > depth[-8:].mean() + 0.5


def test_haze_rejects_a_depth_map_of_another_size(photo):
    with pytest.raises(DegradationError, match="depth_map has shape"):
        degradations.haze(photo, np.random.default_rng(0), depth_map=np.ones((5, 5)))


# ------------------------------------------------------------------------------------------------- blur

@pytest.mark.parametrize("seed", range(8))
def test_blur_kernel_is_normalised(seed):
    rng = np.random.default_rng(seed)
    path = trajectory(rng, length=float(rng.uniform(3, 30)), shake=1.5, inertia=0.5, jerk=0.02)
    steps = np.abs(np.diff(path))
    kernel = rasterise(path)
    assert kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.min() >= 0 and kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert steps.sum() == pytest.approx(np.abs(path[1] - path[0]) * len(steps), rel=1e-6)  # constant speed


def test_blur_preserves_linear_light():
    """An isolated light spreads its radiance without gaining or losing any (linear light, kernel sum 1)."""
    dark = np.full((64, 64, 3), 0.05, np.float32)
    dark[32, 32] = 1.0
    out, applied = degradations.motion_blur(dark, np.random.default_rng(4), length=12.0)
    assert applied["kernel_size"] > 3
    energy_in = srgb_to_linear(dark).sum(axis=(0, 1))
    energy_out = srgb_to_linear(out).sum(axis=(0, 1))
    np.testing.assert_allclose(energy_out, energy_in, rtol=2e-3)
    assert out[32, 32, 0] < 0.9  # the point was actually spread
    # in sRGB the same blur would have dimmed the light: linear-light blur keeps more of the highlight
    assert out.astype(np.float64).sum() > dark.astype(np.float64).sum()


def test_blur_keeps_mean_brightness_of_a_photo(photo):
    out, _ = degradations.motion_blur(photo.astype(np.float32) / 255, np.random.default_rng(6))
    mean_in = srgb_to_linear(photo.astype(np.float32) / 255).mean()
    assert srgb_to_linear(out).mean() == pytest.approx(mean_in, rel=0.02)


# -------------------------------------------------------------------------------------------- low light

def test_low_light_scales_linear_luminance_by_beta(photo):
    image = photo.astype(np.float32) / 255
    out, applied = degradations.low_light(image, np.random.default_rng(8), alpha=1.0, gamma=1.0, beta=[0.2, 0.6],
                                          shot_log10=-9.0, read_log10=-12.0, quantize=False)
    ratio = luminance(srgb_to_linear(out)).mean() / luminance(srgb_to_linear(image)).mean()
    assert 0.2 <= applied["beta"] <= 0.6
    assert ratio == pytest.approx(applied["beta"], rel=0.01)


def test_low_light_darkens_as_drawn_with_default_ranges(photo):
    image = photo.astype(np.float32) / 255
    out, a = degradations.low_light(image, np.random.default_rng(9), shot_log10=-7.0)
    expected = a["beta"] * np.power(a["alpha"] * srgb_to_linear(image), a["gamma"])
    measured = luminance(srgb_to_linear(out)).mean()
    assert measured == pytest.approx(luminance(expected).mean(), rel=0.05, abs=2e-4)
    assert measured < 0.5 * luminance(srgb_to_linear(image)).mean()
    assert np.allclose(out * 255, np.rint(out * 255), atol=1e-3)  # quantised to 8-bit levels


def test_srgb_round_trip():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6)


# ------------------------------------------------------------------------------------------------- jpeg

def test_jpeg_is_the_round_trip_of_a_real_jpeg_file_at_the_drawn_quality(photo):
    import io

    from PIL import Image

    out, applied = apply([{"name": "jpeg", "quality": 20}], photo, np.random.default_rng(0))
    assert applied == [{"name": "jpeg", "quality": 20}] and _strict_json(applied)
    # what a photo saved at quality 20 and read back holds (PIL's libjpeg, RGB in, 4:2:0), not a BGR-swapped cousin
    encoded = io.BytesIO()
    Image.fromarray(photo).save(encoded, format="JPEG", quality=20)
    np.testing.assert_array_equal(out, np.asarray(Image.open(encoded).convert("RGB")))
    float_out, _ = apply({"name": "jpeg", "quality": 20}, photo.astype(np.float32) / 255, np.random.default_rng(0))
    np.testing.assert_array_equal(np.rint(float_out * 255).astype(np.uint8), out)


def test_jpeg_quality_range_is_drawn_per_sample_and_lower_quality_loses_more(photo):
    qualities = {apply({"name": "jpeg", "quality": [10, 40]}, photo, np.random.default_rng(seed))[1][0]["quality"]
                 for seed in range(20)}
    assert len(qualities) > 5 and min(qualities) >= 10 and max(qualities) <= 40
    error = {q: np.abs(apply({"name": "jpeg", "quality": q}, photo, np.random.default_rng(0))[0].astype(float)
                       - photo).mean() for q in (10, 40, 95)}
    assert error[10] > error[40] > error[95]
    with pytest.raises(DegradationError, match="jpeg.quality: 0 is outside"):
        apply({"name": "jpeg", "quality": [0, 40]}, photo, np.random.default_rng(0))
    # as the last step of a composite (what real photos carry)
    _, applied = apply([{"name": "rain"}, {"name": "jpeg", "quality": 30}], photo, np.random.default_rng(0))
    assert [a["name"] for a in applied] == ["rain", "jpeg"]


# ------------------------------------------------------------------------------------ registry contract

@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_degradation_honours_the_contract(photo, name, dtype):
    image = photo if dtype == np.uint8 else photo.astype(np.float32) / 255
    before = image.copy()
    fn = REGISTRY[name]
    out, applied = fn(image, np.random.default_rng(11))
    again, applied_again = fn(image, np.random.default_rng(11))
    other, _ = fn(image, np.random.default_rng(12))
    np.testing.assert_array_equal(image, before)  # input untouched
    assert out.dtype == image.dtype and out.shape == image.shape
    if dtype == np.float32:
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.tobytes() == again.tobytes() and applied == applied_again
    assert out.tobytes() != other.tobytes()
    assert not np.array_equal(out, image)
    assert applied["name"] == name and _strict_json(applied)
    json.dumps(applied)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (17, 90)])
def test_tiny_and_thin_images_work(shape):
    image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    for name in REGISTRY:
        out, _ = apply(name, image, np.random.default_rng(1))
        assert out.shape == image.shape and out.dtype == np.uint8, name


def test_apply_takes_a_name_a_dict_or_a_list(photo):
    out, applied = apply("rain", photo, np.random.default_rng(0))
    assert [a["name"] for a in applied] == ["rain"] and out.shape == photo.shape
    _, applied = apply({"name": "gaussian_noise", "sigma": 15}, photo, np.random.default_rng(0))
    assert applied == [{"name": "gaussian_noise", "sigma": 15.0, "quantize": "truncate"}]
    steps = [{"name": "low_light"}, {"name": "rain", "layers": [2, 3]}, "haze"]
    out, applied = apply(steps, photo, np.random.default_rng(0))
    again, _ = apply(steps, photo, np.random.default_rng(0))
    assert [a["name"] for a in applied] == ["low_light", "rain", "haze"]
    assert applied[1]["layers"] in (2, 3)
    assert out.dtype == np.uint8 and out.tobytes() == again.tobytes()
    assert _strict_json(applied)


def test_apply_single_step_equals_the_function(photo):
    direct, a1 = REGISTRY["snow"](photo, np.random.default_rng(4))
    via, a2 = apply("snow", photo, np.random.default_rng(4))
    np.testing.assert_array_equal(direct, via)
    assert [a1] == a2


def test_unknown_names_and_params_fail_clearly(photo):
    rng = np.random.default_rng(0)
    with pytest.raises(DegradationError, match="unknown degradation 'fog'.*gaussian_noise"):
        apply("fog", photo, rng)
    with pytest.raises(DegradationError, match=r"'rain'.*unknown parameter.*\['sigma'\].*allowed.*density"):
        apply({"name": "rain", "sigma": 3}, photo, rng)
    with pytest.raises(DegradationError, match="unknown parameter"):
        degradations.haze(photo, rng, colour="red")
    with pytest.raises(DegradationError, match="gaussian_noise.sigma: a range must be two numbers"):
        apply({"name": "gaussian_noise", "sigma": [1, 2, 3]}, photo, rng)
    with pytest.raises(DegradationError, match="low > high"):
        apply({"name": "haze", "beta": [0.2, 0.1]}, photo, rng)
    with pytest.raises(DegradationError, match="allowed"):
        apply({"name": "gaussian_noise", "quantize": "floor"}, photo, rng)
    assert issubclass(DegradationError, SiplError)


def test_bad_images_fail_clearly(photo):
    rng = np.random.default_rng(0)
    with pytest.raises(DegradationError, match="H×W×3"):
        apply("haze", photo[..., 0], rng)
    with pytest.raises(DegradationError, match=r"\[0, 1\]"):
        apply("haze", photo.astype(np.float32), rng)
    with pytest.raises(DegradationError, match="numpy.random.Generator"):
        degradations.rain(photo, 0)


# --------------------------------------------------------------------------------------- presets, params

def test_cdd11_names_and_order():
    assert list(CDD11) == ["low", "haze", "rain", "snow", "low_haze", "low_rain", "low_snow", "haze_rain",
                           "haze_snow", "low_haze_rain", "low_haze_snow"]
    rank = {"low_light": 0, "rain": 1, "snow": 2, "haze": 3}
    for name, steps in CDD11.items():
        names = [s["name"] for s in degradations.validate(steps)]
        assert names == sorted(names, key=rank.__getitem__), name
        assert not {"rain", "snow"} <= set(names)
        short = {"low_light": "low"}
        assert set(name.split("_")) == {short.get(n, n) for n in names}


def test_cdd11_composite_runs(photo):
    out, applied = apply(CDD11["low_haze_snow"], photo, np.random.default_rng(1))
    assert [a["name"] for a in applied] == ["low_light", "snow", "haze"] and out.shape == photo.shape


def test_params_yaml_tasks_are_valid_and_run(photo):
    tasks = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["tasks"]
    assert len(tasks) == 11
    for task, spec in tasks.items():
        steps = degradations.validate(spec["steps"])
        out, applied = apply(steps, photo[:24, :24], np.random.default_rng(len(task)))
        assert len(applied) == len(steps) and _strict_json(applied), task
        assert math.isfinite(float(out.mean()))


# the random sensor noise of these steps switched off; what is left is deterministic given the generator
_NOISELESS = {"gaussian_noise": {"sigma": 0.0}, "motion_blur": {"noise": 0.0},
              "low_light": {"shot_log10": -12.0, "read_log10": -16.0, "quantize": False}}


@pytest.mark.parametrize("order", [(2, 1, 0), (1, 2, 0)])
def test_params_yaml_tasks_treat_the_channels_alike(photo, order):
    # what train.channel_shuffle relies on: reordering the clean image's channels reorders the degraded image's
    tasks = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["tasks"]
    for task, spec in tasks.items():
        steps = [{**step, **_NOISELESS.get(step["name"], {})} for step in spec["steps"]]
        seed = len(task)
        out, _ = apply(steps, photo.astype(np.float32) / 255.0, np.random.default_rng(seed))
        reordered, _ = apply(steps, photo[..., list(order)].astype(np.float32) / 255.0, np.random.default_rng(seed))
        np.testing.assert_allclose(reordered, out[..., list(order)], atol=2e-3, err_msg=task)


def test_a_tinted_airlight_is_not_channel_blind(photo):
    step = {"name": "haze", "beta": 0.15, "airlight": 0.9, "tint": 0.3}
    out, _ = apply(step, photo, np.random.default_rng(3))
    reordered, _ = apply(step, photo[..., ::-1], np.random.default_rng(3))
    assert np.abs(reordered.astype(int) - out[..., ::-1].astype(int)).max() > 5


def test_no_global_rng_and_no_torch(photo):
    import random
    import subprocess
    import sys

    np_state, py_state = np.random.get_state(), random.getstate()
    for name in REGISTRY:
        apply(name, photo, np.random.default_rng(0))
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]
    assert random.getstate() == py_state
    code = "import sys, degradations; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=60).returncode == 0
