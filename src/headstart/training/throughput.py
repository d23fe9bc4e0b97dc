"""How fast a fine-tuning depth trains here: what ``strategy="auto"`` estimates its candidates'
costs from, timed on the training loop's own step (``loop.train_step``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np

from headstart.core.system import compute_threads
from headstart.data.loaders import loader_workers, train_loader
from headstart.models.backbones import Backbone
from headstart.models.heads import Head
from headstart.training.distributed import current as current_job
from headstart.training.loop import Objective, autocast, train_step
from headstart.training.network import freeze, make_network, set_train_mode
from headstart.training.settings import FineTuneSettings, resolve_precision
from headstart.training.state import TrainState

MEASURE_BATCH_SIZE = 16


def measure_training(
    backbone: Backbone,
    probe: Head,
    items: Sequence[tuple[str, int]],
    unfreeze: str,
    settings: FineTuneSettings,
) -> dict[str, float]:
    """``{"train_s", "eval_s"}``: seconds per image of training at depth ``unfreeze`` (the
    median batch after the first, which pays for the loader's start and the kernels' warm-up)
    and of evaluation (the faster of two batches). The first fine-tuning epochs then correct
    these estimates (``estimator.auto._calibrate``). Measured where the fine-tuning will run (a GPU where
    torch sees one)."""
    import torch

    torch.set_num_threads(compute_threads(None))
    device = current_job().device
    precision = resolve_precision(settings.precision, device)
    model = copy.deepcopy(backbone.model)
    freeze(model, unfreeze)
    network = make_network(model, backbone.data_config, probe).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack this overload
    set_train_mode(network, True)
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-6)
    state = TrainState(settings, network, optimizer, precision=precision)
    objective = Objective(torch.nn.CrossEntropyLoss())
    workers = loader_workers(settings.workers, accelerator=device != "cpu")
    loader, _ = train_loader(
        items, settings.augment, backbone.data_config, MEASURE_BATCH_SIZE, workers, settings.seed
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timed, last = [], time.perf_counter()
    for pixels, labels in loader:
        pixels, labels = pixels.to(device), labels.to(device)
        train_step(state, objective, pixels, labels.clamp(min=0))
        sync()
        now = time.perf_counter()
        timed.append((now - last) / len(labels))
        last = now
    network.eval()
    evaluated = []
    with torch.inference_mode(), autocast(precision, device.split(":")[0]):
        for _ in range(2):
            t0 = time.perf_counter()
            network(pixels)
            sync()
            evaluated.append((time.perf_counter() - t0) / len(pixels))
    eval_s = min(evaluated)
    train_s = float(np.median(timed[1:])) if len(timed) > 1 else 4 * eval_s
    return {"train_s": train_s, "eval_s": eval_s}
