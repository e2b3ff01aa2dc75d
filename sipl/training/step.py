"""The training step: the model wrapper DDP sees, the optimiser, EMA and gradient accumulation.

DDP: ``training_step`` runs several passes (privileged encoder pass without gradients, dictionary-only pass,
fused pass), so the model is wrapped in ``_StepModule`` whose ``forward`` *is* the training step; DDP then sees one
forward per micro-batch and all-reduces the gradients in backward (``find_unused_parameters`` on, because plain
mode or a zero preliminary weight leaves parameters without gradients).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from sipl.errors import SiplError


class _StepModule(torch.nn.Module):
    """Routes ``forward(lq, gt)`` to ``model.training_step`` so a DDP wrapper all-reduces its gradients."""

    def __init__(self, model: torch.nn.Module, pixel_loss: Callable, **step_options: Any):
        """``step_options``: keyword arguments of ``SIPLModel.training_step`` (ignored by plain models)."""
        super().__init__()
        self.model = model
        self.pixel_loss = pixel_loss
        self.step_options = step_options

    def forward(self, lq: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None,
                labels: torch.Tensor | None = None,
                head_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``head_batch``: (lq, gt, labels) crops that train only the degradation head."""
        options = self.step_options
        degradation_weight = options.get("degradation_weight", 0.0)
        head_affine = options.get("affine_weight", 0.0)
        if not getattr(self.model, "sipl", False):
            out = self.model.training_step(lq, gt, self.pixel_loss, labels=labels,
                                           degradation_weight=degradation_weight, affine_weight=head_affine)
        else:
            out = self.model.training_step(lq, gt, self.pixel_loss, generator=generator, labels=labels, **options)
        if head_batch is not None:
            # computed even at zero weights: the classifier then stays in the graph, as DDP expects of every
            # parameter the unused-parameter probe saw used
            terms = self.model.head_step(*head_batch, self.pixel_loss, degradation_weight, head_affine)
            out.update(terms)
            out["loss"] = out["loss"] + terms["head_loss"]
        return out


def step_module_for(model: torch.nn.Module, cfg) -> _StepModule:
    """The training step of a ``sipl.config.profiles.TrainConfig`` recipe (loss terms and SIPL step options) for
    ``model``."""
    from sipl.training.losses import from_config

    return _StepModule(model, from_config(cfg.loss), preliminary_weight=cfg.loss.preliminary,
                       random_proxy=cfg.random_proxy, self_privileged=cfg.self_privileged,
                       privileged_source=cfg.privileged_source, preliminary_share=cfg.preliminary_share,
                       degradation_weight=cfg.loss.degradation, affine_weight=cfg.loss.head_affine)


def memory_format_of(cfg) -> torch.memory_format:
    """The memory layout a ``TrainConfig`` trains in: ``torch.channels_last`` or ``torch.contiguous_format``."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def to_memory_format(model: torch.nn.Module, memory_format: torch.memory_format) -> torch.nn.Module:
    """Put every 4-D parameter and buffer of ``model`` in ``memory_format``, in place (``Module.to`` refuses
    channels_last for a model that also holds 5-D parameters, such as PromptIR's prompts); returns ``model``."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=memory_format)
    return model


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """The recipe's AdamW (``lr``, ``betas``, ``weight_decay``); ``fused_optimizer`` selects torch's fused kernel,
    which updates every parameter in one pass instead of a Python loop of small ops per tensor."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             fused=bool(cfg.fused_optimizer) or None)


def degradation_labels(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
    """Class index (into ``model.degradation_classes``) of every sample of a batch: ``"clean"`` for identity pairs
    (keys ending in ``#clean``), else the sample's task; None when the model has no degradation head."""
    from sipl.config.profiles import CLEAN_CLASS

    classes = list(getattr(model, "degradation_classes", None) or [])
    if not classes:
        return None
    index = {name: i for i, name in enumerate(classes)}
    missing = [field for field in ("keys", "tasks") if field not in batch]
    if missing:
        raise SiplError(f"a batch for a model with a degradation head needs {missing} (the loader's sample keys "
                        "and task names)")
    try:
        return torch.tensor([index[CLEAN_CLASS if key.endswith("#clean") else task]
                             for key, task in zip(batch["keys"], batch["tasks"])], dtype=torch.long)
    except KeyError as error:
        raise SiplError(f"training sample of task {error} has no class in the model's degradation head "
                        f"({classes}); the model was built for other tasks") from None


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    model_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def accumulate_gradients(wrapped: torch.nn.Module, batches: list[dict[str, Any]], device: torch.device,
                         autocast=None, step_seed: int | None = None,
                         memory_format: torch.memory_format = torch.channels_last) -> dict[str, float]:
    """Forward/backward over the micro-batches of one optimiser step; gradients accumulate in ``.grad``.

    Each micro-batch loss is divided by the number of micro-batches, so the gradient is that of the mean loss over
    the worker's batch; DDP (if ``wrapped`` is one) all-reduces only on the last micro-batch. Returns the mean of
    each loss term (floats).

    ``step_seed``: every micro-batch of every rank draws the step's random choices (``self_privileged``, the
    ``preliminary_share`` split, ``random_proxy``) from a generator seeded with it. The same draw everywhere keeps
    the ranks' step costs equal (an independent draw per rank makes the fast rank wait at the all-reduce) and
    keeps one worker × accumulation equal to several workers; ``None`` uses torch's global generator.

    ``memory_format``: the layout the images are handed to the model in (the model's own, ``memory_format_of``)."""
    from sipl.data.loader import to_float

    def images(key: str) -> torch.Tensor:
        return to_float(batch[key], device).contiguous(memory_format=memory_format)

    terms: dict[str, float] = {}
    count = len(batches)
    for index, batch in enumerate(batches):
        lq, gt = images("lq"), images("gt")
        last = index == count - 1
        sync = wrapped.no_sync() if not last and hasattr(wrapped, "no_sync") else contextlib.nullcontext()
        with sync:
            generator = torch.Generator().manual_seed(step_seed) if step_seed is not None else None
            inner = _inner_model(wrapped)
            labels = degradation_labels(inner, batch)
            head_batch = None
            if "head_lq" in batch:
                head_labels = degradation_labels(inner, {"keys": [""] * len(batch["head_labels"]),
                                                         "tasks": batch["head_labels"]})
                head_batch = (images("head_lq"), images("head_gt"), head_labels)
            with autocast or contextlib.nullcontext():
                out = wrapped(lq, gt, generator, labels, head_batch)
            (out["loss"] / count).backward()
        for name, value in out.items():
            terms[name] = terms.get(name, 0.0) + float(value.detach()) / count
    return terms


def _inner_model(wrapped: torch.nn.Module) -> torch.nn.Module:
    """The restoration model inside a step module, DDP-wrapped or not."""
    inner = getattr(wrapped, "module", wrapped)
    return getattr(inner, "model", inner)


def unused_parameters(step_module: _StepModule, device: torch.device, side: int = 32) -> list[str]:
    """Names of parameters that get no gradient from one training step (DDP must be told about them).

    Probed on two random side×side samples; gradients are cleared afterwards and the torch RNG state is kept."""
    rng_state = torch.get_rng_state()
    probe = torch.rand(2, 2, 3, side, side, device=device)  # 2 samples: preliminary_share needs a split
    step_module.model.zero_grad(set_to_none=True)
    step_module(probe[0], probe[1])["loss"].backward()
    unused = [name for name, p in step_module.model.named_parameters() if p.requires_grad and p.grad is None]
    step_module.model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng_state)
    return unused
