"""Multi-node torchrun over loopback (issue 25): two `torchrun --nnodes 2 --nproc-per-node 1`
launches meet at a c10d rendezvous on 127.0.0.1 and train one run, in one run dir written
by global rank 0; its weights equal a 2-process single-node run of the same recipe. Also:
one node killed mid-run, both resumed, gives the uninterrupted weights; kd.cache is built
once (by global rank 0) for both nodes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # 2-process trainings: a few minutes on 2 cores

ARGS = ["data.size=[64,64]", "data.synthetic_length=16", "data.synthetic_val_length=8",
        "data.batch_size=2", "model.decoder_channels=[16,16,8,8,8]", "train.epochs=2",
        "train.threads=1", "w_task=1", "kd.response.weight=0", "train.vis_every=0"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launch: list[str], out, name: str, extra: list[str] = (),
              command: str = "train") -> subprocess.Popen:
    """One torchrun launch of ``compress COMMAND`` on the tiny recipe (``extra``: more
    overrides, or ``--resume RUN`` alone), in its own process group."""
    if extra[:1] == ["--resume"]:
        args = list(extra)
    else:
        args = ["-c", str(REPO / "configs" / "quickstart.yaml"), f"output_dir={out}",
                f"name={name}", *ARGS, *extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "compress.cli",
           command, "-q", *args]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


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


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [c for c, p in parent.items() if p == here]
        found += kids
        todo += kids
    return found


def _rdzv() -> list[str]:
    return ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{_port()}", "--rdzv-id=segcompress-test"]


def _weights(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state_dict"]


def _worst(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_killing_one_node_then_resuming_both_gives_the_uninterrupted_weights(tmp_path):
    longer = ["data.synthetic_length=48", "train.epochs=4"]  # epochs long enough to kill in
    rdzv = _rdzv()
    nodes = [_torchrun(rdzv, tmp_path / "runs", "killed", longer) for _ in range(2)]
    runs = tmp_path / "runs" / "killed"
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoints/last.pt")):  # epoch 1 saved: kill node 2
        assert time.monotonic() < deadline and nodes[0].poll() is None, "no epoch finished"
        time.sleep(0.2)
    for pid in [nodes[1].pid, *_descendants(nodes[1].pid)]:  # torchrun's workers have
        os.kill(pid, signal.SIGKILL)                         # sessions of their own
    for p in nodes:
        p.communicate(timeout=600)
    assert nodes[0].returncode != 0  # its peer is gone: node 1 stops, it does not hang
    (run,) = runs.iterdir()
    done = (run / "metrics.csv").read_text().count("\n") - 1
    assert 1 <= done < 4, done
    rdzv = _rdzv()
    _wait(*[_torchrun(rdzv, tmp_path / "runs", "killed", ["--resume", str(run)])
            for _ in range(2)])
    _wait(_torchrun(["--nproc-per-node=2", f"--master-port={_port()}"], tmp_path / "runs",
                    "whole", longer))
    (whole,) = (tmp_path / "runs" / "whole").iterdir()
    assert _worst(_weights(run), _weights(whole)) < 1e-5
    assert (run / "metrics.csv").read_text().count("\n") == 5  # header + 4 epochs, once each


def test_two_nodes_build_the_teacher_cache_once_and_distil_as_one_node(trained_teacher, tmp_path):
    kd = [f"teacher.checkpoint={trained_teacher}", "kd.cache=true", "kd.response.weight=1",
          "w_task=0.5"]
    rdzv = _rdzv()
    _wait(*[_torchrun(rdzv, tmp_path / "runs", "nodes", kd, command="distill") for _ in range(2)])
    _wait(_torchrun(["--nproc-per-node=2", f"--master-port={_port()}"], tmp_path / "runs",
                    "node", kd, command="distill"))
    (multi,) = (tmp_path / "runs" / "nodes").iterdir()
    (single,) = (tmp_path / "runs" / "node").iterdir()
    assert len(list(multi.rglob("logits.npy"))) == 1
    log = (multi / "train.log").read_text()
    assert log.count("teacher cache:") == 1 and "run once" in log
    assert _worst(_weights(multi), _weights(single)) < 1e-5
