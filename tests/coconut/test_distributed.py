"""Data parallel training with torch.distributed: 2 CPU processes, gloo backend."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from coconut.experiment import EXPERIMENT
from coconut.train import train
from launch.experiment import RunContext


def _worker(rank: int, world: int, port: int, run_dir: str, config: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = train(config, RunContext(run_dir=Path(run_dir)), "cpu")
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(run_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_stay_in_sync(tmp_path, make_config):
    config = make_config(num_epochs=2, train_size=8, val_size=5, batch_size=2, grad_accum=1, dropout=0.0)
    assert EXPERIMENT.check(config) == []
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), config), nprocs=2, join=True,
                       start_method="spawn")
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)                   # averaged gradients: same weights
    first = torch.load(tmp_path / "checkpoint_1")["model"]
    assert any(not torch.equal(a[k], first[k]) for k in a)           # and they trained
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4                                           # rank 0 alone logs: 2 epochs x train/val
