"""deploy.machine: the one machine description, for manifests and timing reports."""

from __future__ import annotations

from deploy import machine
from deploy import runtime as registry
from deploy.manifest import EXPORT_LIBRARIES, new_manifest


def test_manifest_environment_and_hardware_read_one_module(tmp_path):
    env = machine.environment((*registry.packages(), *EXPORT_LIBRARIES))
    assert list(env) == ["python", "platform", "machine", "cpu", "packages"]
    hw = machine.hardware_info("cpu", 1, registry.packages())
    assert hw["cpu"] == env["cpu"] == machine.cpu_name() and hw["os"] == env["platform"]
    assert hw["packages"]["torch"] == env["packages"]["torch"] and hw["threads"] == 1
    assert set(hw["packages"]) <= set(registry.packages()) and "gpu" not in hw
    assert machine.describe_hardware(hw).startswith(f"CPU {hw['cpu']} (")
    from compress.spec import ModelSpec

    spec = ModelSpec(arch="Unet", encoder="resnet18", classes=2, class_names=["a", "b"],
                     ignore_index=255, mean=[0.5] * 3, std=[0.5] * 3, input_size=[64, 64])
    m = new_manifest(tmp_path / "best.pt", "0" * 64, spec, {}, {}, registry.packages())
    assert list(m["environment"]) == list(env) and m["environment"]["cpu"] == env["cpu"]
    assert m["environment"]["packages"] == env["packages"]
