"""The frozen prefix of a partly unfrozen backbone, run as fast as inference.

With ``unfreeze="last:2"`` most of the backbone is frozen: its leading stages never change and
need no gradient, yet a training step would run them through torch's training path. Here the
frozen leading stages become one inference graph:

- ``openvino`` (``auto``): exported to ONNX (static batch, BatchNorm folded) and compiled by
  OpenVINO, in bf16 where the run trains in bf16 (the feature engine's numerics), else fp32;
- ``torch``: the same stages under ``torch.inference_mode``, channels-last, bf16 autocast where the
  run trains in bf16;
- ``off``: the network runs whole, as it did before this module existed.

Which networks: timm EfficientNets (the offline zoo), whose ``forward_features`` is its stages
one after another (stem conv, stem BatchNorm, block stages, head conv, head BatchNorm). Others
run whole. The prefix's output is the input of the first trainable stage; it is never trained,
so a step is the same computation up to the prefix's numerics.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headstart.core.errors import ParameterError
from headstart.core.runtimes import compile_openvino

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module


FROZEN_PREFIX_MODES = ("auto", "openvino", "torch", "off")


def check_frozen_prefix(mode: str) -> None:
    if mode not in FROZEN_PREFIX_MODES:
        raise ParameterError("frozen_prefix", f"unknown value '{mode}': use {', '.join(FROZEN_PREFIX_MODES)}")


def network_stages(model: Module) -> list[Module] | None:
    """The modules ``model.forward_features`` runs one after another, or None for a network whose
    features are not such a chain (then it always runs whole)."""
    from timm.models.efficientnet import EfficientNet

    if not isinstance(model, EfficientNet) or model.grad_checkpointing:
        return None
    return [model.conv_stem, model.bn1, *model.blocks, model.conv_head, model.bn2]


def frozen_count(stages: list[Module]) -> int:
    """How many leading stages have no trainable parameter (``set_train_mode`` keeps those in
    eval mode, so they compute as in inference)."""
    count = 0
    for stage in stages:
        if any(p.requires_grad for p in stage.parameters()):
            break
        count += 1
    return count


class PrefixRunner:
    """Runs the frozen leading ``stages`` on normalised NCHW float pixels; the result needs no
    gradient and is a plain tensor (safe to feed the trainable stages)."""

    mode = "torch"

    def __init__(self, stages: list[Module], precision: str) -> None:
        import torch

        self.stages = torch.nn.Sequential(*stages)
        self.precision = precision

    def __call__(self, x: Tensor) -> Tensor:
        import torch

        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), autocast:
            out = self.stages(x.contiguous(memory_format=torch.channels_last))
        return out.float().clone()  # a normal tensor: inference tensors cannot be saved for backward


class OpenVinoPrefixRunner(PrefixRunner):
    """The frozen stages compiled by OpenVINO for a static batch (a smaller batch is padded)."""

    mode = "openvino"

    def __init__(
        self, stages: list[Module], precision: str, batch_size: int, size: tuple[int, int], threads: int
    ):
        import torch

        self.precision, self.batch_size = precision, batch_size
        prefix = copy.deepcopy(torch.nn.Sequential(*stages)).eval().float()
        example = torch.zeros((batch_size, 3, *size), dtype=torch.float32)
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        with tempfile.TemporaryDirectory(prefix="headstart-prefix-") as folder:
            path = Path(folder) / "prefix.onnx"
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    prefix, (example,), str(path), input_names=["x"], opset_version=17, dynamo=False
                )
            self.compiled = compile_openvino(path, config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: Tensor) -> Tensor:
        import torch

        n = len(x)
        batch = x.detach().float().contiguous().numpy()
        if n != self.batch_size:
            batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
        out = self.request.infer({0: batch})[0]
        return torch.from_numpy(np.array(out[:n], dtype=np.float32, copy=True))


def build_prefix(
    model: Module, mode: str, precision: str, batch_size: int, size: tuple[int, int], threads: int
) -> tuple[PrefixRunner | None, list[Module], str]:
    """The runner of ``model``'s frozen leading stages, the stages that remain, and what was done
    (``openvino``, ``torch``, or why nothing: ``off``, ``none frozen``, ``not a stage chain``).

    Args:
        mode: one of ``FROZEN_PREFIX_MODES``.
        precision: the run's resolved precision (``bf16`` or ``fp32``).
        batch_size, size: the static batch and (height, width) an OpenVINO prefix is compiled for.
        threads: OpenVINO's inference threads (the run's torch threads).
    """
    check_frozen_prefix(mode)
    stages = network_stages(model)
    if mode == "off":
        return None, [], "off"
    if stages is None:
        return None, [], "not a stage chain"
    n = frozen_count(stages)
    if n == 0:
        return None, stages, "none frozen"
    if mode in ("auto", "openvino"):
        runner: PrefixRunner = OpenVinoPrefixRunner(stages[:n], precision, batch_size, size, threads)
    else:
        runner = PrefixRunner(stages[:n], precision)
    return runner, stages[n:], runner.mode
