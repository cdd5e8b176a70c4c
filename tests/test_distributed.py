"""Data-parallel training: the per-rank shards, and a real two-process ``torchrun`` job on gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from model.data.signals import HAPT_ACTIVITIES, HAPT_CHANNELS
from model.train import distributed
from streamer.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "uci_har_3x3.toml"


@pytest.mark.parametrize("n", [1, 7, 10, 100, 101])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_the_shards_of_an_epoch_are_disjoint_equal_and_cover_it(n, world_size):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [distributed.shard(order, r, world_size) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    taken = torch.cat(shards)
    assert len(taken) == n + (-n % world_size)  # padded only up to the next multiple
    assert set(taken.tolist()) == set(order.tolist())  # together they cover the epoch
    if n % world_size == 0:  # with no padding, no window is seen twice
        assert len(set(taken.tolist())) == n
    # rank r takes every world_size-th position of the shared order, so shards never overlap there
    positions = [set(range(r, len(taken), world_size)) for r in range(world_size)]
    assert all(a.isdisjoint(b) for i, a in enumerate(positions) for b in positions[i + 1 :])


def test_without_torchrun_no_process_group_is_started(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.setup("cpu")
    assert (context.rank, context.world_size, context.device, context.distributed) == (0, 1, "cpu", False)
    assert not torch.distributed.is_initialized() and distributed.world() == (0, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    assert train.main(["--config", str(CONFIG), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sees no CUDA GPU" in err and err.startswith("train.py: ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_trains_two_ranks_in_sync_and_saves_one_checkpoint(csv_dataset, tmp_path, capsys):
    out = tmp_path / "weights" / "ddp.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "train.py", "--config", str(CONFIG), "--epochs", "2", "--out", str(out),
        "--data-dir", str(csv_dataset), "--set", 'data.dataset="csv"',
        "--set", f"data.channels={list(HAPT_CHANNELS)}", "--set", f"data.classes={list(HAPT_ACTIVITIES)}",
        "--set", 'data.test_subjects=["2"]', "--set", 'data.val_subjects=["3"]',
        "--set", "model.n_hidden=8", "--set", "model.n_stacked=1", "--set", "model.n_residual=1",
        "--set", "train.threads=1", "--set", "train.batch_size=65",  # 32 per rank: a global batch of 64
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]

    assert sorted(p.name for p in out.parent.iterdir() if p.suffix == ".pt") == ["ddp.pt"]
    assert log.count("epoch    1/2") == 1, log  # only rank 0 reports
    assert "2 ranks (gloo) in sync: identical parameters" in log, log
    assert "batch 65 over 2 processes is 32 per rank" in log, log
    meta = json.loads(out.with_suffix(".json").read_text())
    ddp = meta["distributed"]
    assert (ddp["world_size"], ddp["backend"], ddp["batch_per_rank"]) == (2, "gloo", 32)
    assert len(ddp["parameter_sha256"]) == 2 and len(set(ddp["parameter_sha256"])) == 1
    assert meta["command"].startswith("torchrun --nproc_per_node=2 train.py")
    assert [r["epoch"] for r in meta["history"]] == [1, 2]

    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out), "--data-dir", str(csv_dataset), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["data_fingerprint_matches"] and scores["n_windows"] == meta["metrics"]["test"]["n_windows"]
    assert scores["accuracy"] == pytest.approx(meta["metrics"]["test"]["accuracy"])
