"""ONNX Runtime execution of a model's test-time passes: the same ``encode`` / ``decode`` interface as ``SIPLModel``.

On CPU, PyTorch's eager convolutions on this U-Net's thin NCHW maps (16-64 channels, 1×1 and depthwise 3×3) reach a
few GFLOP/s; ONNX Runtime runs the same graph in its own layouts with fused element-wise operators, about 4× faster
(``benchmarks/restore.py`` measures both in one run; docs/evaluation.md has the figures).

A model is exported as two graphs (three with SIPL), all on inputs padded to the model's ``multiple``:

- ``encode``: padded image (+ the unpadded image for the degradation head) -> encoder levels 1-3, latent, and the
  head's conditioning (FiLM scale/shift per fused level, output gain and bias);
- ``decode``: the encoder state -> restoration (global residual, head affine, clipped to [0, 1]; dictionary-only);
- ``decode_privileged``: the encoder state + an image -> restoration with that image's encoder features as the
  privileged features (one refinement pass).

Padding and cropping stay in PyTorch (reflect padding exactly as ``Backbone.encode`` does), so every graph sees
shapes that are multiples of ``multiple`` and its dynamic height and width need no data-dependent arithmetic. The
exported files are cached by a hash of the weights, the model's config, the head's confidence gate and the library
versions (``$SIPL_CACHE_DIR`` or ``~/.cache/sipl/onnx``), so each model is exported once per machine and gate.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sipl.errors import SiplError
from sipl.models.common import EncoderState, pad_to_multiple
from sipl.models.degradation_head import Conditioning

# Bump when the graphs' inputs, outputs or semantics change: old cache entries are then ignored.
GRAPH_VERSION = 1
GRAPHS = ("encode", "decode", "decode_privileged")


def cache_root() -> Path:
    """Folder of exported graphs: ``$SIPL_CACHE_DIR/onnx`` if set, else ``$XDG_CACHE_HOME/sipl/onnx`` or
    ``~/.cache/sipl/onnx``."""
    if os.environ.get("SIPL_CACHE_DIR"):
        return Path(os.environ["SIPL_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sipl" / "onnx"


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's weights, its config, its head's confidence gate (``affine_min_confidence``, set from
    selection.json after the config was written, and a constant of the encode graph) and the exporting library
    versions (hex, 24 characters)."""
    import onnxruntime

    head = getattr(model, "head", None)
    digest = hashlib.sha256()
    digest.update(json.dumps({"config": getattr(model, "config", None), "graph": GRAPH_VERSION,
                              "gate": getattr(head, "affine_min_confidence", None),
                              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
                             sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _conditioning_tensors(condition: Conditioning | None) -> list[Tensor]:
    """Flatten a head's conditioning: FiLM (scale, shift) per level, then gain and bias when present."""
    if condition is None:
        return []
    tensors = [t for pair in condition.film for t in pair]
    if condition.gain is not None:
        tensors += [condition.gain, condition.bias]
    return tensors


def _conditioning(tensors: list[Tensor], levels: int) -> Conditioning | None:
    """Inverse of ``_conditioning_tensors`` (logits are not kept: decoding does not read them)."""
    if not tensors:
        return None
    film = [(tensors[2 * i], tensors[2 * i + 1]) for i in range(levels)]
    rest = tensors[2 * levels:]
    gain, bias = (rest[0], rest[1]) if rest else (None, None)
    return Conditioning(logits=None, film=film, gain=gain, bias=bias)


class _EncodeGraph(nn.Module):
    """(padded[, image]) -> (skip 1, skip 2, skip 3, latent, *conditioning)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, padded: Tensor, image: Tensor | None = None) -> tuple[Tensor, ...]:
        skips, latent = self.model.backbone._encode(padded)
        condition = self.model.head(image) if self.model.head is not None else None
        return (*skips, latent, *_conditioning_tensors(condition))


class _DecodeGraph(nn.Module):
    """(padded, skips, latent, *conditioning[, privileged image]) -> restoration clipped to [0, 1] (padded size)."""

    def __init__(self, model: nn.Module, privileged: bool) -> None:
        super().__init__()
        self.model = model
        self.privileged = privileged

    def forward(self, padded: Tensor, skip1: Tensor, skip2: Tensor, skip3: Tensor, latent: Tensor,
                *rest: Tensor) -> Tensor:
        privileged = rest[-1] if self.privileged else None
        condition_tensors = list(rest[:-1] if self.privileged else rest)
        state = EncoderState(image=padded, skips=[skip1, skip2, skip3], latent=latent,
                             size=(padded.shape[-2], padded.shape[-1]))
        condition = _conditioning(condition_tensors, 3)
        return self.model.decode(state, privileged, condition=condition).clamp(0, 1)


@dataclass
class OnnxState:
    """Encoder state of one input for ``OnnxModel``: the padded image, the graph's encoder outputs (NumPy, fed back
    unchanged), the unpadded size (H, W)."""

    padded: Tensor
    arrays: list
    size: tuple[int, int]


@contextlib.contextmanager
def _quiet():
    """Silence the exporter: it reports each phase on stdout and logs and warns about operators it skips."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export(module: nn.Module, args: tuple[Tensor, ...], dynamic: tuple, path: Path) -> None:
    """Export ``module`` at ``args`` with the dynamic axes ``dynamic`` (one dict or None per argument), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # The exporter reports each of its phases on stdout; a restore's output is its own.
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(module, args, dynamic_shapes=dynamic, dynamo=True, verbose=False,
                                        optimize=True, external_data=False, report=False)
            program.save(tmp, external_data=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_graphs(model: nn.Module, folder: Path) -> None:
    """Write ``encode.onnx``, ``decode.onnx`` (and ``decode_privileged.onnx`` for SIPL models) of ``model`` to
    ``folder`` (each file written atomically)."""
    from torch.export import Dim

    multiple = model.multiple
    # Example inputs: a batch of 2 and distinct sides (export specialises sizes of 1 and unifies equal sizes).
    padded = torch.rand(2, 3, 8 * multiple, 9 * multiple)
    image = torch.rand(2, 3, 8 * multiple - 3, 9 * multiple - 5)
    rows, cols = Dim("rows", min=1, max=4096), Dim("cols", min=1, max=4096)
    batch = Dim("batch", min=1, max=256)
    image_dims = {0: batch, 2: multiple * rows, 3: multiple * cols}
    encode = _EncodeGraph(model).eval()
    has_head = model.head is not None
    encode_args = (padded, image) if has_head else (padded,)
    raw = (Dim("raw_rows", min=8, max=32768), Dim("raw_cols", min=8, max=32768))
    encode_dims = ({"padded": image_dims, "image": {0: batch, 2: raw[0], 3: raw[1]}} if has_head
                   else {"padded": image_dims})
    _export(encode, encode_args, encode_dims, folder / "encode.onnx")
    with torch.no_grad():
        outputs = encode(*encode_args)
    scales = [multiple // 2 ** level for level in range(len(outputs[:4]))]  # skip 1..3 at 1, 1/2, 1/4; latent 1/8
    state_dims = [{0: batch, 2: s * rows, 3: s * cols} for s in scales]
    condition_dims = [{0: batch} for _ in outputs[4:]]
    decode_inputs = (padded, *outputs)
    # The trailing *rest of _DecodeGraph.forward takes one tuple of specs.
    decode_dims = (image_dims, *state_dims, *([tuple(condition_dims)] if condition_dims else []))
    _export(_DecodeGraph(model, privileged=False).eval(), decode_inputs, decode_dims, folder / "decode.onnx")
    if getattr(model, "sipl", False):
        _export(_DecodeGraph(model, privileged=True).eval(), (*decode_inputs, torch.rand_like(padded)),
                (image_dims, *state_dims, (*condition_dims, image_dims)), folder / "decode_privileged.onnx")


class OnnxModel:
    """A model's test-time passes run by ONNX Runtime, for ``sipl.models.refine``: ``encode(x)``, ``decode(state,
    privileged=None)`` (``privileged``: an image, N×3×H×W in [0, 1]), ``classify(x)`` (eager: it runs on one small
    crop). Inputs N×3×H×W float32 in [0, 1]; outputs the same shape, clipped to [0, 1]."""

    def __init__(self, model: nn.Module, threads: int | None = None, cache: Path | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise SiplError("the onnx engine needs the onnxruntime package (pip install onnxruntime); "
                            "or use --engine eager") from None
        self.model = model.eval()
        self.sipl = bool(getattr(model, "sipl", False))
        self.multiple = model.multiple
        self.degradation_classes = list(getattr(model, "degradation_classes", []))
        folder = (cache or cache_root()) / model_fingerprint(model)
        needed = [name for name in GRAPHS if self.sipl or name != "decode_privileged"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3

        def open_sessions() -> dict:
            return {name: onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                       providers=["CPUExecutionProvider"]) for name in needed}

        if not all((folder / f"{name}.onnx").is_file() for name in needed):
            print(f"sipl: exporting the model for ONNX Runtime into {folder} (once per model and machine; "
                  "20-60 s)", file=sys.stderr, flush=True)
            export_graphs(model, folder)
        try:
            self.sessions = open_sessions()
        except Exception as error:  # noqa: BLE001 - a damaged cache entry (onnxruntime has no common error base)
            reason = " ".join(str(error).split())[:160] or type(error).__name__
            print(f"sipl: the cached ONNX graphs in {folder} cannot be loaded ({reason}); re-exporting the model "
                  "(20-60 s)", file=sys.stderr, flush=True)
            export_graphs(model, folder)
            self.sessions = open_sessions()
        self.folder = folder

    def _run(self, name: str, arrays: list) -> list:
        session = self.sessions[name]
        feeds = {spec.name: array for spec, array in zip(session.get_inputs(), arrays)}
        return session.run(None, feeds)

    def encode(self, x: Tensor) -> OnnxState:
        """Encoder state of N×3×H×W ``x`` (float32 in [0, 1])."""
        x = x.float().contiguous()
        padded = pad_to_multiple(x, self.multiple).contiguous()
        inputs = [padded.numpy()] + ([x.numpy()] if self.model.head is not None else [])
        return OnnxState(padded=padded, arrays=self._run("encode", inputs), size=(x.shape[-2], x.shape[-1]))

    def decode(self, state: OnnxState, privileged: Tensor | None = None) -> Tensor:
        """Restoration N×3×H×W in [0, 1] of the encoded input; ``privileged``: the image whose encoder features
        the fusion modules absorb (None: dictionary-only)."""
        h, w = state.size
        arrays = [state.padded.numpy(), *state.arrays]
        if privileged is None:
            out = self._run("decode", arrays)[0]
        else:
            if not self.sipl:
                raise SiplError("privileged decoding needs a SIPL model (this one is a plain backbone)")
            image = pad_to_multiple(privileged.float().contiguous(), self.multiple).contiguous()
            out = self._run("decode_privileged", [*arrays, image.numpy()])[0]
        return torch.from_numpy(out)[..., :h, :w]

    def classify(self, x: Tensor) -> Tensor:
        """Degradation class probabilities N×K (the eager head: it reads one small crop)."""
        return self.model.classify(x)

    def eval(self) -> "OnnxModel":
        return self
