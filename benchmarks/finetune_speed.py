"""Fine-tuning speed: the frozen prefix run as inference (OpenVINO or torch inference mode) against
the whole network in torch's training path, side by side in one process.

The same augmented batches of photos (decoded once, beforehand, so decoding is not timed) train
one network per mode from the same probe and the same seed; the modes take turns batch by batch,
so a change in the machine's load hits them alike. Printed per mode: training images/s (optimiser
steps, warm-up steps left out), its ratio to ``off`` (the network whole, the path before the
frozen prefix), the loss of each step and its largest distance from ``off``'s, and the fp32
logits' largest distance from ``off``'s on one batch before training.

    flock /work/wt/cpu.lock python benchmarks/finetune_speed.py ../shared/datasets/flower_photos \
        --batches 12 --modes off,torch,openvino
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import numpy as np


def load_batches(data: str, n_batches: int, batch_size: int, data_config: dict[str, Any], seed: int) -> tuple:
    """``n_batches`` augmented batches of a seeded sample of ``data``'s photos, and the class count."""
    from headstart.data.discovery import discover
    from headstart.data.loaders import loader_workers, train_loader

    dataset = discover(data)
    index = {name: i for i, name in enumerate(dataset.classes)}
    items = [(s.path, index[s.label]) for s in dataset.samples]
    chosen = np.random.default_rng(seed).choice(len(items), n_batches * batch_size, replace=False)
    items = [items[i] for i in chosen]
    loader, sampler = train_loader(items, "default", data_config, batch_size, loader_workers(None), seed)
    sampler.epoch = 1
    return [(pixels, labels) for pixels, labels in loader][:n_batches], items, len(dataset.classes)


def fit_probe(backbone: Any, batches: list, n_classes: int) -> Any:
    """A linear probe on the batches' features (what fine-tuning starts from)."""
    import torch

    from headstart.models.heads import LogisticHead

    mean = torch.tensor(backbone.data_config["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(backbone.data_config["std"]).view(1, 3, 1, 1) * 255
    with torch.inference_mode():
        feats = np.concatenate([backbone.model((p.float() - mean) / std).numpy() for p, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    half = len(labels) // 2
    head = LogisticHead(refit=False)
    head.fit(feats[:half], labels[:half], feats[half:], labels[half:], n_classes)
    return head


def make_run(
    mode: str, backbone: Any, head: Any, settings: Any, items: list, n_classes: int
) -> dict[str, Any]:
    """A network, optimiser and schedule as FineTuner builds them, with the frozen prefix ``mode``."""
    import torch

    from headstart.training.loop import FineTuner
    from headstart.training.network import freeze, make_network
    from headstart.training.prefix import build_prefix
    from headstart.training.settings import resolve_precision

    torch.manual_seed(settings.seed)
    tuner = FineTuner(settings, verbose=False)
    tuner.precision, tuner.threads = resolve_precision(settings.precision), torch.get_num_threads()
    model = copy.deepcopy(backbone.model)
    freeze_info = freeze(model, settings.unfreeze)
    network = make_network(model, backbone.data_config, head).to(memory_format=torch.channels_last)
    size = tuple(backbone.data_config["input_size"][1:])
    t0 = time.perf_counter()
    runner, rest, how = build_prefix(model, mode, tuner.precision, settings.batch_size, size, tuner.threads)
    build_s = time.perf_counter() - t0
    network.use_prefix(runner, rest)
    state = tuner._state(network, freeze_info, len(items), "")
    objective, _ = tuner._losses(head, items, n_classes)
    return {"mode": mode, "how": how, "state": state, "objective": objective, "build_s": build_s, "steps": []}


def fp32_logits_gap(backbone: Any, head: Any, settings: Any, pixels: Any, mode: str) -> float:
    """Largest |logit difference| between ``mode`` and ``off`` in fp32, eval mode, one batch."""
    import torch

    from headstart.training.network import freeze, make_network
    from headstart.training.prefix import build_prefix

    outputs = []
    for m in ("off", mode):
        model = copy.deepcopy(backbone.model)
        freeze(model, settings.unfreeze)
        network = make_network(model, backbone.data_config, head).to(memory_format=torch.channels_last)
        size = tuple(backbone.data_config["input_size"][1:])
        network.use_prefix(
            *build_prefix(model, m, "fp32", settings.batch_size, size, torch.get_num_threads())[:2]
        )
        with torch.inference_mode():
            outputs.append(network.eval()(pixels))
    return float((outputs[0] - outputs[1]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="?", default="../shared/datasets/flower_photos")
    parser.add_argument("--batches", type=int, default=12, help="batches trained per mode")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each mode left out of the rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unfreeze", default="last:2")
    parser.add_argument("--modes", default="off,torch,openvino")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    args = parser.parse_args()
    run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from headstart.core.system import cpu_summary, usable_core_count
    from headstart.models.backbones import create_backbone
    from headstart.training.loop import train_one_epoch
    from headstart.training.settings import FineTuneSettings

    print(cpu_summary())
    torch.set_num_threads(args.threads or usable_core_count())
    settings = FineTuneSettings(
        unfreeze=args.unfreeze, batch_size=args.batch_size, epochs=1, precision=args.precision, seed=args.seed
    )
    backbone = create_backbone()
    batches, items, n_classes = load_batches(
        args.data, args.batches, args.batch_size, backbone.data_config, args.seed
    )
    head = fit_probe(backbone, batches, n_classes)
    modes = args.modes.split(",")
    runs = [make_run(mode, backbone, head, settings, items, n_classes) for mode in modes]
    for pixels, labels in batches:  # the modes take turns, batch by batch
        for run in runs:
            t0 = time.perf_counter()
            loss, _ = train_one_epoch(run["state"], [(pixels, labels)], run["objective"])
            run["steps"].append((time.perf_counter() - t0, loss, len(labels)))
    report(runs, args, torch.get_num_threads())
    for mode in modes[1:]:
        gap = fp32_logits_gap(backbone, head, settings, batches[0][0], mode)
        print(
            f"fp32 logits, {mode} vs off (eval, one batch of {len(batches[0][0])}): max |difference| {gap:.2e}"
        )
    return runs


def report(runs: list[dict[str, Any]], args: argparse.Namespace, threads: int) -> None:
    precision = runs[0]["state"].precision
    print(
        f"{args.unfreeze}, batch {args.batch_size}, {args.batches} batches per mode ({args.warmup} warm-up left out), "
        f"{precision}, {threads} torch thread(s)"
    )
    base = None
    for run in runs:
        timed = run["steps"][args.warmup :]
        rate = sum(n for _, _, n in timed) / sum(s for s, _, _ in timed)
        base = base or rate
        losses = np.array([loss for _, loss, _ in run["steps"]])
        ref = np.array([loss for _, loss, _ in runs[0]["steps"]])
        print(
            f"{run['mode']:9s} ({run['how']}): {rate:6.1f} images/s  x{rate / base:.2f}  prefix built in "
            f"{run['build_s']:.1f}s  loss first/last {losses[0]:.4f}/{losses[-1]:.4f}  "
            f"max |loss - off's| {np.abs(losses - ref).max():.4f}"
        )
        print("   losses: " + " ".join(f"{v:.3f}" for v in losses))


if __name__ == "__main__":
    main()
