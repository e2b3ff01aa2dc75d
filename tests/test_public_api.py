"""The public Python API named in README.md resolves to the code the pipeline runs."""

from __future__ import annotations

import numpy as np
import torch


def test_public_paths_are_the_pipeline_objects():
    import degradations
    import sipl
    import sipl.metrics
    import sipl.refine
    from sipl.evaluation import metrics
    from sipl.models import build_model, files, refine, registry

    assert sipl.refine.refine is refine.refine
    assert sipl.metrics.psnr is metrics.psnr and sipl.metrics.ssim is metrics.ssim
    assert build_model is registry.build_model
    assert callable(sipl.load_model) and callable(files.load_model)
    assert callable(degradations.apply) and "haze" in degradations.REGISTRY and degradations.CDD11


def test_readme_example_runs(tmp_path):
    import degradations
    import sipl
    import sipl.metrics
    from sipl.models import build_model
    from sipl.models.files import save_model
    from sipl.refine import refine

    image = np.full((32, 32, 3), 128, np.uint8)
    hazy, applied = degradations.apply([{"name": "low_light"}, {"name": "haze"}], image, np.random.default_rng(0))
    assert hazy.shape == image.shape and [step["name"] for step in applied] == ["low_light", "haze"]
    torch.manual_seed(0)
    model = build_model(backbone="nafnet", size="tiny", sipl=True, width=8, middle_blocks=1)
    x = torch.rand(1, 3, 32, 32)
    steps = [step for step, _ in refine(model, x, steps=2, scheme="anchored")]
    assert steps == [0, 1, 2]
    save_model(model, tmp_path / "models")
    loaded, meta = sipl.load_model(tmp_path / "models")
    assert meta["model"] == model.config
    assert float(sipl.metrics.psnr(x, x)[0]) > 99.0 and float(sipl.metrics.ssim(x, x)[0]) > 0.999
