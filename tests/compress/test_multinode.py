"""Multi-node torchrun over loopback (issue 25): two `torchrun --nnodes 2 --nproc-per-node 1`
launches meet at a c10d rendezvous on 127.0.0.1 and train one run, in one run dir written
by global rank 0; its weights equal a 2-process single-node run of the same recipe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # four training processes: about a minute on 2 cores

ARGS = ["data.size=[64,64]", "data.synthetic_length=16", "data.synthetic_val_length=8",
        "data.batch_size=2", "model.decoder_channels=[16,16,8,8,8]", "train.epochs=2",
        "train.threads=1", "w_task=1", "kd.response.weight=0", "train.vis_every=0"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launch: list[str], out, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "compress.cli",
           "train", "-q", "-c", str(REPO / "configs" / "quickstart.yaml"),
           f"output_dir={out}", f"name={name}", *ARGS]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(*procs: subprocess.Popen) -> None:
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


def test_two_nodes_over_loopback_train_one_run_equal_to_one_node(tmp_path):
    port = _port()
    rdzv = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=segcompress-test"]
    nodes = [_torchrun(rdzv, tmp_path / "runs", "two-nodes") for _ in range(2)]
    _wait(*nodes)
    _wait(_torchrun(["--nproc-per-node=2", f"--master-port={_port()}"], tmp_path / "runs",
                    "one-node"))
    (multi,) = (tmp_path / "runs" / "two-nodes").iterdir()  # one run dir for both nodes
    (single,) = (tmp_path / "runs" / "one-node").iterdir()
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
            for r in (multi, single))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    assert (multi / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs
