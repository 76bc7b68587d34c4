"""The one description of this machine, for export manifests and timing reports alike.

:func:`environment` is what a ``manifest.json`` records (Python, OS, CPU, package
versions); :func:`hardware_info` is what bench's tables record beside their timings (the
same CPU name and package versions, plus cores, threads, CPU flags, memory, load and the
GPU); :func:`describe_hardware` is its one line. Callers pass the package names: deploy's
export dependencies, or bench's backends (``deploy.runtime.packages()``). Imports nothing
of deploy; psutil and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names; absent ones left out)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(packages: Sequence[str]) -> dict[str, Any]:
    """Where an export ran: Python, OS, CPU and the versions of ``packages``."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "packages": package_versions(packages),
    }


def hardware_info(device: str = "cpu", threads: int | None = None,
                  packages: Sequence[str] = ()) -> dict[str, Any]:
    """What timings ran on: CPU model, cores, threads, CPU flags, memory, load average,
    OS, Python and the versions of ``packages`` (absent ones left out); on CUDA also GPU
    name, driver, CUDA/cuDNN and clocks as read from ``nvidia-smi`` (:func:`gpu_info`)."""
    import psutil

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "cpu_flags": cpu_flags(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(packages),
    }
    if device.startswith("cuda"):
        info["gpu"] = gpu_info()
    return info


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels run (AVX-512, VNNI, BF16, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = (
                    "avx2",
                    "avx512f",
                    "avx512_vnni",
                    "avx_vnni",
                    "avx512_bf16",
                    "avx512_fp16",
                    "amx_tile",
                    "amx_bf16",
                    "amx_int8",
                )
                return [f for f in keep if f in flags]
    except OSError:
        pass
    return []


def gpu_info() -> dict[str, Any]:
    """GPU name, driver, CUDA / cuDNN, memory and clocks (current and max, MHz)."""
    import torch

    info: dict[str, Any] = {}
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(
            name=props.name,
            memory_gb=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        )
    fields = [
        "name",
        "driver_version",
        "clocks.sm",
        "clocks.mem",
        "clocks.max.sm",
        "clocks.max.mem",
        "power.limit",
        "pstate",
        "temperature.gpu",
    ]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        info["clocks"] = "unknown (nvidia-smi not found)"
        return info
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as e:
        info["clocks"] = f"unknown (nvidia-smi failed: {e})"
        return info
    line = out.strip().splitlines()[torch.cuda.current_device() if torch.cuda.is_available() else 0]
    values = dict(zip(fields, (v.strip() for v in line.split(","))))
    info["name"] = info.get("name") or values["name"]
    info["driver"] = values["driver_version"]
    info["clocks_mhz"] = {
        "sm": values["clocks.sm"],
        "mem": values["clocks.mem"],
        "max_sm": values["clocks.max.sm"],
        "max_mem": values["clocks.max.mem"],
    }
    info["power_limit_w"] = values["power.limit"]
    info["pstate"] = values["pstate"]
    info["temperature_c"] = values["temperature.gpu"]
    return info


def describe_hardware(info: dict[str, Any]) -> str:
    """One line for tables and reports."""
    cores = f"{info.get('physical_cores')} cores"
    threads = f", {info['threads']} thread(s) pinned" if info.get("threads") else ""
    flags = f" [{' '.join(info['cpu_flags'])}]" if info.get("cpu_flags") else ""
    load = f", load average {info['load_average'][0]:.2f}" if info.get("load_average") else ""
    text = f"CPU {info.get('cpu')} ({cores}{threads}){flags}, {info.get('memory_gb')} GB RAM{load}"
    gpu = info.get("gpu")
    if gpu:
        clocks = gpu.get("clocks_mhz")
        clock_text = (
            f", SM {clocks['sm']}/{clocks['max_sm']} MHz, mem {clocks['mem']}/"
            f"{clocks['max_mem']} MHz"
            if isinstance(clocks, dict)
            else ""
        )
        text += (
            f"; GPU {gpu.get('name')} (driver {gpu.get('driver', '?')}, CUDA "
            f"{gpu.get('cuda', '?')}{clock_text})"
        )
    return text
