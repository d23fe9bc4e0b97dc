"""Distributed fine-tuning and sharded extraction, in real processes on this machine (gloo).

Each test starts processes (torchrun's launcher, or plain interpreters) on 24 generated 64 px
images, one torch thread per rank. What they prove: two ranks train as one process does (the
first epoch's loss within ``LOSS_TOLERANCE`` with the same global batch), only rank 0 writes,
two torchrun agents meet as two "nodes", a killed rank ends the job and ``--resume`` continues
(with another world size), sharded extraction extracts each image once and equals one process's,
and the SQLite cache takes several writing processes at once.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import make_class_folders

from headstart.core.folders import staging_folders
from headstart.runs.writer import resumable_folder

PYTHON = sys.executable
SRC = Path(__file__).resolve().parents[1] / "src"
# fp32, same seed, same global batch: the ranks' batches together are one process's batch, so
# only the order of float sums differs (measured: about 1e-6).
LOSS_TOLERANCE = 1e-3
JOB_TIMEOUT = 240

FIT_SCRIPT = """
import os, sys
from pathlib import Path

log = Path(sys.argv[3]) / f"writes-rank{os.environ.get('RANK', '0')}.txt"
real_replace = os.replace

def logged_replace(src, dst, *args, **kwargs):  # every atomic write ends in os.replace
    with open(log, "a") as f:
        f.write(os.path.abspath(dst) + "\\n")
    return real_replace(src, dst, *args, **kwargs)

os.replace = logged_replace
import headstart

headstart.ImageClassifier(
    strategy="finetune", unfreeze="last:1", epochs=1, train_batch_size=8, precision="fp32",
    check_data=False, report_map="none", seed=3,
).fit(sys.argv[1], out_dir=sys.argv[2])
"""

EXTRACT_SCRIPT = """
import json, os, sys
from pathlib import Path
import numpy as np
import torch.distributed as dist
from headstart.features.cache import FeatureCache
from headstart.features.extractor import build_extractor
from headstart.features.sharding import extract_sharded

dist.init_process_group("gloo")
written = []
real_put = FeatureCache.put_many

def counted_put(self, ns, items):
    written.extend(key for key, _ in items)
    return real_put(self, ns, items)

FeatureCache.put_many = counted_put
paths = json.loads(Path(sys.argv[1]).read_text())
extractor = build_extractor(cache_dir=sys.argv[2], engine="onnxruntime", verbose=False)
first = extract_sharded(extractor, paths)
again = extract_sharded(extractor, paths)
np.savez(
    Path(sys.argv[3]) / f"rank{dist.get_rank()}.npz", features=first.features, written=np.array(written),
    errors=json.dumps(first.errors), extracted=[first.n_extracted, again.n_extracted],
)
dist.destroy_process_group()
# Rule: the test judges what each rank wrote above; the interpreter's teardown of native thread
# pools afterwards once aborted a rank ("terminate called without an active exception") after
# its results were complete, so the script leaves without it.
sys.stdout.flush()
os._exit(0)
"""

CACHE_WRITER = """
import sys
import numpy as np
from headstart.features.cache import FeatureCache

cache = FeatureCache(sys.argv[1], timeout=0.0)  # no busy timeout: the retries must cover it
who = int(sys.argv[2])
for t in range(TRANSACTIONS):
    cache.put_many("ns", [(f"{who}-{t}-{i}", np.full(64, who, np.float32)) for i in range(5)])
    cache.remember_hashes([(f"/p/{who}/{t}", 1, 2, 3, 4, "h")])
    assert len(cache.get_many("ns", [f"{who}-{t}-0"])) == 1
assert not cache.problem, cache.problem
""".replace("TRANSACTIONS", "300")  # without retries, some of 4 x 300 are refused as busy


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out.update(PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return out


def torchrun(*args: str) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--monitor-interval", "0.2", *args]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, **kwargs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("ddp") / "colors", per_class=8)


@pytest.fixture(scope="module")
def one_and_two(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same fit in one process and in two gloo ranks (torchrun), each logging its writes."""
    root = tmp_path_factory.mktemp("fits")
    script = root / "fit.py"
    script.write_text(FIT_SCRIPT)
    cache = str(root / "cache")
    runs = {"one": root / "one", "two": root / "two"}
    for name in runs:
        (root / f"log-{name}").mkdir()
    run(
        [PYTHON, str(script), str(data), str(runs["one"]), str(root / "log-one")],
        env=env(HEADSTART_CACHE=cache),
    )
    cmd = torchrun("--standalone", "--nproc-per-node", "2", str(script))
    run([*cmd, str(data), str(runs["two"]), str(root / "log-two")], env=env(HEADSTART_CACHE=cache))
    return {**runs, "log-two": root / "log-two"}


@pytest.mark.slow
def test_two_ranks_first_epoch_matches_one_process(one_and_two: dict[str, Path]) -> None:
    one, two = history(one_and_two["one"])[0], history(one_and_two["two"])[0]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert abs(float(one[key]) - float(two[key])) < LOSS_TOLERANCE, (key, one[key], two[key])
    metrics = json.loads((one_and_two["two"] / "metrics.json").read_text())
    assert metrics["finetune"]["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    assert metrics["finetune"]["torch_threads"] == 1
    single = json.loads((one_and_two["one"] / "metrics.json").read_text())
    assert single["finetune"]["distributed"] == {"world_size": 1, "backend": "none", "device": "cpu"}
    assert "world size 2, backend gloo" in (one_and_two["two"] / "log.txt").read_text()


@pytest.mark.slow
def test_only_rank_zero_writes_and_no_file_twice(one_and_two: dict[str, Path]) -> None:
    run = one_and_two["two"].resolve()
    # the run is written in its staging folder beside the run folder, then swapped in (runs.writer)
    folders = (str(run), str(run.parent / f".{run.name}.headstart-new-"))
    logs = one_and_two["log-two"]
    rank1 = (logs / "writes-rank1.txt").read_text().split() if (logs / "writes-rank1.txt").exists() else []
    rank0 = (logs / "writes-rank0.txt").read_text().split()
    assert not [p for p in rank1 if p.startswith(folders)], rank1
    in_run = [p for p in rank0 if p.startswith(folders) and p != str(run)]
    assert {Path(p).name for p in in_run} >= {"model.safetensors", "metrics.json", "history.csv", "last.pt"}
    once = [p for p in in_run if not p.endswith(("history.csv", "last.pt", "best.pt"))]  # per epoch
    assert len(once) == len(set(once)), sorted(once)


@pytest.mark.slow
def test_two_nodes_meet_and_keep_their_own_caches(data: Path, tmp_path: Path) -> None:
    """Two torchrun agents (two "nodes") on 127.0.0.1, one process each, each with its own feature
    cache: the features travel over the process group, not through a shared SQLite file."""
    port, out = free_port(), tmp_path / "run"
    agents = []
    for node in (0, 1):
        cmd = torchrun(
            "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
            "-m", "headstart", "train", str(data), "--strategy", "finetune", "--unfreeze", "last:1",
            "--epochs", "1", "--batch-size", "8", "--no-check-data", "--out", str(out), "--quiet",
        )  # fmt: skip
        cache = str(tmp_path / f"cache-node{node}")
        agents.append(
            subprocess.Popen(
                cmd,
                env=env(HEADSTART_CACHE=cache),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for agent in agents:
        output = agent.communicate(timeout=JOB_TIMEOUT)[0]
        assert agent.returncode == 0, output[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetune"]["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    rows = []
    for node in (0, 1):
        with sqlite3.connect(tmp_path / f"cache-node{node}" / "features.sqlite") as db:
            rows.append({key for (key,) in db.execute("SELECT key FROM features")})
    assert rows[0] and rows[1] and not rows[0] & rows[1]
    assert len(rows[0] | rows[1]) == 24


def worker_pids(agent: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the agent's worker processes."""
    found = {}
    for child in psutil.Process(agent.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except (psutil.Error, OSError):
            continue
        if rank is not None and "headstart" in " ".join(child.cmdline()):
            found[int(rank)] = child.pid
    return found


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_resume_continues(data: Path, tmp_path: Path) -> None:
    """``--nproc 2`` (torchrun's launcher, started by headstart); rank 1 killed in epoch 2: the job
    ends (no hang), and ``--resume`` in one process (another world size) finishes the run."""
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    cmd = [PYTHON, "-m", "headstart", "train", str(data), "--strategy", "finetune", "--unfreeze", "last:1",
           "--epochs", "4", "--patience", "9", "--batch-size", "8", "--no-check-data", "--out", str(out),
           "--nproc", "2"]  # fmt: skip
    agent = subprocess.Popen(
        cmd, env=env(HEADSTART_CACHE=cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + JOB_TIMEOUT
    while not any((staged / "checkpoints" / "last.pt").exists() for staged in staging_folders(out)):
        if agent.poll() is not None or time.time() > deadline:
            agent.kill()
            pytest.fail("no first checkpoint:\n" + agent.communicate()[0][-4000:])
        time.sleep(0.05)
    os.kill(worker_pids(agent)[1], signal.SIGKILL)
    output = agent.communicate(timeout=120)[0]  # the agent stops rank 0 and exits
    assert agent.returncode != 0, output[-2000:]
    done = len(history(resumable_folder(out)))  # the killed run's staging folder (runs.writer)
    assert 1 <= done < 4 and not out.exists()
    run([PYTHON, "-m", "headstart", "train", "--resume", str(out)], env=env(HEADSTART_CACHE=cache))
    assert [int(r["epoch"]) for r in history(out)] == list(range(1, 5))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetune"]["resumed_from_epoch"] == done
    assert metrics["finetune"]["distributed"]["world_size"] == 1


@pytest.mark.slow
def test_sharded_extraction_writes_each_image_once_and_equals_one_process(data: Path, tmp_path: Path) -> None:
    from headstart.features.extractor import build_extractor

    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    shutil.copy(paths[0], tmp_path / "copy_of_first.jpg")  # identical bytes: extracted once
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths += [str(tmp_path / "copy_of_first.jpg"), str(tmp_path / "broken.jpg")]
    listing = tmp_path / "paths.json"
    listing.write_text(json.dumps(paths))
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT_SCRIPT)
    cmd = torchrun("--standalone", "--nproc-per-node", "2", str(script))
    run([*cmd, str(listing), str(tmp_path / "shared-cache"), str(tmp_path)], env=env())
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    alone = build_extractor(cache_dir=tmp_path / "own-cache", engine="onnxruntime", verbose=False).extract(
        paths
    )
    for result in ranks:
        assert json.loads(str(result["errors"])).keys() == {str(len(paths) - 1)}
        ok = alone.ok
        np.testing.assert_allclose(result["features"][ok], alone.features[ok], atol=1e-4)
        assert np.isnan(result["features"][~ok]).all()
    written = [list(r["written"]) for r in ranks]
    assert written[0] and written[1] and not set(written[0]) & set(written[1])
    assert sorted(written[0] + written[1]) == sorted({h for h in alone.hashes if h} - {alone.hashes[-1]})
    assert [int(r["extracted"][1]) for r in ranks] == [0, 0]  # the second pass: all from the cache


def test_cache_takes_concurrent_writers(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen(
            [PYTHON, "-c", CACHE_WRITER, str(tmp_path), str(who)],
            env=env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in range(4)
    ]
    for writer in writers:
        err = writer.communicate(timeout=120)[1]
        assert writer.returncode == 0 and "warning" not in err, err
    with sqlite3.connect(tmp_path / "features.sqlite") as db:
        assert db.execute("SELECT count(*) FROM features").fetchone()[0] == 4 * 300 * 5
        assert db.execute("SELECT count(*) FROM file_stamps").fetchone()[0] == 4 * 300
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_ranks_batches_together_are_one_process_batches() -> None:
    from headstart.data.loaders import EpochSampler
    from headstart.training.distributed import DistributedEpochSampler

    single = EpochSampler(20, seed=5, shuffle=True)
    ranks = [DistributedEpochSampler(EpochSampler(20, seed=5, shuffle=True), 2, r) for r in (0, 1)]
    for epoch in (0, 3):
        single.epoch = epoch
        for sampler in ranks:
            sampler.epoch = epoch
        order, parts = list(single), [list(s) for s in ranks]
        for k in range(0, 20, 8):  # global batch 8 = 4 per rank
            together = parts[0][k // 2 : k // 2 + 4] + parts[1][k // 2 : k // 2 + 4]
            assert sorted(together) == sorted(order[k : k + 8])


def test_global_batch_must_divide_among_the_ranks() -> None:
    from headstart.core.errors import ParameterError
    from headstart.training.distributed import Distributed, without_flag

    assert Distributed(world_size=4).per_rank_batch(32) == 8
    with pytest.raises(ParameterError, match="train_batch_size"):
        Distributed(world_size=3).per_rank_batch(32)
    assert without_flag(["train", "d", "--nproc", "2", "--nproc=3", "--out", "o"], "--nproc") == [
        "train", "d", "--out", "o",
    ]  # fmt: skip


@pytest.mark.cli
def test_nproc_below_one_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from headstart.cli.app import app

    result = CliRunner().invoke(app, ["train", str(tmp_path), "--nproc", "0"])
    assert result.exit_code == 2 and "--nproc" in result.output


def test_one_process_trains_on_the_first_gpu_torch_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a job a GPU is used when there is one (and the CPU otherwise); metrics say which."""
    import torch

    from headstart.training import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.current().device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    job = distributed.current()
    assert (job.device, job.active) == ("cuda:0", False)
    assert job.describe() == {"world_size": 1, "backend": "none", "device": "cuda:0"}


def test_a_gpu_gets_every_core_but_one_to_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.data import loaders

    monkeypatch.setattr(loaders, "usable_core_count", lambda: 16)
    assert loaders.loader_workers(None) == 4  # a CPU trains: decoding needs few cores
    assert loaders.loader_workers(None, accelerator=True) == 15
    assert loaders.loader_workers(2, accelerator=True) == 2  # the user's number stands
    monkeypatch.setattr(loaders, "usable_core_count", lambda: 1)
    assert loaders.loader_workers(None, accelerator=True) == 1
