"""quant.qat: NNCF quantization-aware distillation through the one loop; resumes exactly;
exports an INT8 QDQ ONNX that ONNX Runtime and OpenVINO run; a crafted quantizer state
is refused before anything is imported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.config import ConfigError
from compress.models import load_model
from compress.qat import QATError, load_qat_model
from compress.train import fit, step_hook
from tests.conftest import tiny_config

# distil from a trained FP32 copy of the same model, logits only: the INT8 student learns
# to reproduce its FP32 self (BatchNorm statistics frozen: quant.freeze_bn, the default)
QAT = ["quant.qat=true", "kd.response.weight=1.0", "w_task=0", "train.lr=0.0003",
       "teacher.allow_weak=true", "train.warmup_epochs=0"]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp32")
    run = fit(tiny_config(tmp, ["name=fp32", "train.epochs=3"]), show_progress=False).run_dir
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def qat_best(tmp_path_factory, fp32):
    tmp = tmp_path_factory.mktemp("qat")
    run = fit(qat_config(tmp, fp32, ["train.epochs=1"]), show_progress=False).run_dir
    return run / "checkpoints" / "best.pt"


def qat_config(tmp, fp32, extra=()):
    return tiny_config(tmp, ["name=qat", f"model.init_from={fp32}", f"teacher.checkpoint={fp32}",
                             *QAT, *extra])


@pytest.mark.slow  # QAT training twice + a resume, and NNCF's build: ~3 min on 2 cores
def test_qat_resumes_exactly(tmp_path, fp32):
    whole = fit(qat_config(tmp_path / "a", fp32), show_progress=False).run_dir

    def stop(loss, epoch, step):
        if epoch == 1:
            raise RuntimeError("stopped for the test")
        return loss

    with step_hook(stop), pytest.raises(RuntimeError, match="stopped for the test"):
        fit(qat_config(tmp_path / "b", fp32), show_progress=False)
    run = next((tmp_path / "b" / "runs" / "qat").iterdir())
    fit(qat_config(tmp_path / "b", fp32), resume=run, show_progress=False)
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("__nncf_hooks.") for k in a["state_dict"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["quantization"] == b["quantization"]


def _agreement(predict, reference, images) -> float:
    return float((predict(images).argmax(1) == reference(images).argmax(1)).mean())


def test_qat_int8_agrees_with_fp32_at_least_as_well_as_ptq_and_runs_everywhere(tmp_path, fp32):
    import onnxruntime as ort
    import openvino as ov

    from deploy.pipeline import ExportConfig, export_checkpoint
    from tests.deploy.conftest import synthetic_batches, tiny_spec

    run = fit(qat_config(tmp_path, fp32, ["train.epochs=3"]), show_progress=False).run_dir
    qat_ckpt = run / "checkpoints" / "last.pt"
    cfg = ExportConfig(int8=True, openvino=True, synthetic_val_length=8, calib_size=16,
                       max_drop=100.0)
    qat_m = export_checkpoint(qat_ckpt, tmp_path / "qat", cfg)
    export_checkpoint(fp32, tmp_path / "ptq", cfg)
    entry = next(a for a in qat_m["artifacts"] if a["file"] == "model_int8.onnx")
    assert entry["quantization"]["method"].startswith("qat")
    assert entry["quantization"]["quantized_layers"] > 0
    assert {a["file"] for a in qat_m["artifacts"]} >= {"model_int8.onnx", "model_int8.xml"}

    reference = load_model(fp32)  # the FP32 teacher: what both INT8 models should reproduce
    images = np.concatenate([b[0] for b in synthetic_batches(tiny_spec(), n=8)])

    def ref(x):
        with torch.no_grad():
            return reference(torch.from_numpy(x)).numpy()

    def onnx_rt(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: s.run(None, {s.get_inputs()[0].name: x})[0]

    qat_agree = _agreement(onnx_rt(tmp_path / "qat" / "model_int8.onnx"), ref, images)
    ptq_agree = _agreement(onnx_rt(tmp_path / "ptq" / "model_int8.onnx"), ref, images)
    # the tolerance this checks: QAT's INT8 agrees with the FP32 model at least as well as
    # PTQ's, less 1 point of pixels (on this tiny model 12 QAT steps match PTQ, ~95 %)
    assert qat_agree >= ptq_agree - 0.01, (qat_agree, ptq_agree)
    compiled = ov.Core().compile_model(str(tmp_path / "qat" / "model_int8.xml"), "CPU")
    assert compiled(images[:1])[0].shape == (1, 5, 64, 64)


def test_qat_checkpoint_loads_as_float_weights_and_as_quantized(qat_best, fp32):
    best = qat_best
    float_model = load_model(best)  # every consumer of load_model: the fine-tuned weights
    assert not any(k.startswith("__nncf") for k in float_model.state_dict())
    q, _, state = load_qat_model(best)
    assert state["preset"] == "mixed" and load_qat_model(fp32) is None
    x = torch.randn(1, 3, 64, 64)
    assert q(x).shape == float_model(x).shape


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.update(format="x"), "key 'format'"),
    (lambda s: s["nncf_config"]["compression_state"][0].update(module_path="os"),
     "nothing else is imported"),
    (lambda s: s["nncf_config"]["compression_state"][0].update(module_cls_name="Popen"),
     "nothing else is imported"),
    (lambda s: s["nncf_config"]["compression_state"][0]["module_config"].update(num_bits="8"),
     "num_bits"),
    (lambda s: s["nncf_config"]["compression_state"][0].update(hook_names_in_model=[1]),
     "hook_names_in_model"),
])
def test_crafted_quantization_state_is_refused_in_one_line(tmp_path, qat_best, mutate, match):
    raw = torch.load(qat_best, weights_only=True)
    mutate(raw["quantization"])
    path = tmp_path / "crafted.pt"
    torch.save(raw, path)
    with pytest.raises(QATError, match=match) as e:
        load_qat_model(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_qat_with_feature_taps_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="feature taps"):
        tiny_config(tmp_path, ["quant.qat=true", "kd.feature.weight=1.0"])


def test_packed_qat_checkpoint_keeps_its_quantizers(tmp_path, qat_best):
    """`compress pack` of a QAT checkpoint carries its quantizer placement, so the float16
    file still loads as float weights and as the quantized model."""
    from compress.models import pack_checkpoint

    packed = tmp_path / "qat16.pt"
    pack_checkpoint(qat_best, packed)
    float_model = load_model(packed)
    assert not any(k.startswith("__nncf") for k in float_model.state_dict())
    q, _, state = load_qat_model(packed)
    assert state["preset"] == "mixed"
    x = torch.randn(1, 3, 64, 64)
    assert q(x).shape == float_model(x).shape
