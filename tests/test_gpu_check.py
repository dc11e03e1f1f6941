"""The GPU check (bench/gpu_check.sh, bench/gpu_check.py) rehearsed on the CPU: its dry run goes through
the whole sequence (the CUDA-marked tests, training, MFU, decode against transformers, the JSON and the
docs block) with a tiny model, so a GPU run can fail only for reasons that need a GPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of the shell script, eager (the compiled paths are proved on CUDA by tests/test_cuda.py
    and on the CPU by the slow test below); the docs written into a copy of docs/benchmarks.md."""
    out = tmp_path_factory.mktemp("gpu-check")
    docs = out / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--no-setup", "--out", str(out),
                           "--no-compile", "--write-docs", str(docs)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), docs


def test_dry_run_trains_and_reports_tokens_per_second_and_mfu(dry_run):
    from slmkit.config import load_model_config
    from slmkit.model.stats import model_stats

    _, result, _ = dry_run
    training = result["training"]
    sizes = gpu_check.DRY_RUN_SIZES
    assert result["dry_run"] is True and result["errors"] == {}
    assert training["model"] == "nano" and training["seq_len"] == 64 and training["batch_size"] == sizes.batch
    assert len(training["step_seconds"]) == sizes.steps and len(training["losses"]) == sizes.warmup + sizes.steps
    assert training["tokens_per_s"] > 0 and training["best_step_tokens_per_s"] >= training["tokens_per_s"]
    assert training["optimizer"] == "fused AdamW"
    expected_flops = model_stats(load_model_config(preset="nano"), context=64).training_flops_per_token
    assert training["flops_per_token"] == expected_flops
    peak = result["peak"]
    assert peak["flops"] > 0 and "matmul peak measured" in peak["source"]
    assert training["mfu"] == pytest.approx(training["tokens_per_s"] * expected_flops / peak["flops"])
    assert 0 < training["mfu"] < 1 and 0 < training["mfu_vs_measured_matmul"] < 1
    assert training["mfu_target"] == 0.45 and training["target_met"] is False
    assert training["loss_fell"] is True  # the counting rows are learnable: the steps really train


def test_dry_run_decodes_with_slmkit_and_transformers_at_batch_1_and_8(dry_run):
    _, result, _ = dry_run
    decode = result["decode"]
    assert set(decode["tokens_per_s"]) == {"slmkit", "transformers"}  # eager dry run: no compiled engine
    for engine in ("slmkit", "transformers"):
        assert decode["tokens_per_s"][engine]["batch_1"] > 0 and decode["tokens_per_s"][engine]["batch_8"] > 0
    ratio = decode["vs_transformers"]["slmkit"]["batch_8"]
    assert ratio == pytest.approx(decode["tokens_per_s"]["slmkit"]["batch_8"] / decode["tokens_per_s"]["transformers"]["batch_8"])
    assert decode["dtype"] == "bfloat16" and decode["new_tokens"] == gpu_check.DRY_RUN_SIZES.new_tokens
    assert 0 <= decode["greedy_tokens_agreed"] <= decode["greedy_tokens_compared"] == 32


def test_dry_run_records_the_cuda_tests_and_writes_only_the_docs_results_block(dry_run):
    out, result, docs = dry_run
    assert "skipped" in result["cuda_tests"]  # every CUDA-marked test skips on a CPU, and the summary says so
    assert (out / "pytest.log").is_file() and (out / "gpu_check.log").is_file()
    original = (ROOT / "docs" / "benchmarks.md").read_text()
    written = docs.read_text()
    head, _, _ = original.partition(gpu_check.DOCS_BEGIN)
    _, _, tail = original.partition(gpu_check.DOCS_END)
    assert written.startswith(head + gpu_check.DOCS_BEGIN) and written.endswith(gpu_check.DOCS_END + tail)
    block = written[len(head) + len(gpu_check.DOCS_BEGIN):len(written) - len(tail) - len(gpu_check.DOCS_END)]
    assert "CPU dry run (not a GPU measurement)" in block
    assert f"{result['training']['tokens_per_s']:,.0f}" in block and "| slmkit |" in block and "| transformers |" in block


def test_the_docs_can_be_rendered_again_from_a_saved_json(dry_run, tmp_path):
    out, result, _ = dry_run
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\n## GPU (issue 14)\n\nintro\n\n{gpu_check.DOCS_BEGIN}\nold\n{gpu_check.DOCS_END}\n\n## Next\n")
    assert gpu_check.main(["--render", str(out / "gpu_check.json"), "--write-docs", str(docs)]) == 0
    text = docs.read_text()
    assert "old" not in text and text.startswith("# B\n\n## GPU (issue 14)\n\nintro\n\n") and text.endswith("\n## Next\n")
    assert gpu_check.render_results(result) in text


def test_writing_docs_without_the_results_markers_is_refused_in_one_line(dry_run, tmp_path, capsys):
    out, _, _ = dry_run
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# B\n\n## GPU (issue 14)\n\nno markers\n")
    assert gpu_check.main(["--render", str(out / "gpu_check.json"), "--write-docs", str(docs)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gpu_check: ") and "no GPU results block" in error and "\n" not in error
    assert docs.read_text() == "# B\n\n## GPU (issue 14)\n\nno markers\n"


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H200", 989.0),
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100-PCIE-40GB", 312.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.0),
])
def test_datasheet_peak_is_looked_up_by_the_cuda_device_name(name, tflops):
    flops, source = gpu_check.datasheet_peak(name, "bf16")
    assert flops == tflops * 1e12 and "datasheet" in source
    assert gpu_check.datasheet_peak(name, "fp32")[0] == tflops * 1e12 / 2  # TF32 at half the bf16 rate


@pytest.mark.parametrize("name", ["NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA L40S"])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_trainers_peak_for_a_gpu_is_the_scripts_lookup(name, precision, monkeypatch):
    from slmkit.train.device import DeviceSetup, peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    setup = DeviceSetup(torch.device("cuda:0"), precision, f"cuda:0 ({name})")
    assert peak_flops(setup) == gpu_check.datasheet_peak(name, precision)


def test_an_unknown_gpu_has_no_datasheet_peak_and_says_what_to_pass():
    flops, source = gpu_check.datasheet_peak("NVIDIA GeForce GTX 1080")
    assert flops is None and "--peak-tflops" in source and "GTX 1080" in source


def test_the_pytest_summary_is_the_closing_line_of_the_log(tmp_path):
    log = tmp_path / "pytest.log"
    log.write_text("tests/test_cuda.py ss.F\nSKIPPED [1] tests/test_cuda.py:10: needs 2 GPUs\n"
                   "=========== 1 failed, 2 passed, 2 skipped in 81.20s (0:01:21) ===========\n")
    assert gpu_check.pytest_summary(log) == "1 failed, 2 passed, 2 skipped in 81.20s (0:01:21)"
    assert gpu_check.pytest_summary(tmp_path / "missing.log") is None
    log.write_text("tests/test_cuda.py ss.\n")  # killed before it could close
    assert "no closing line" in gpu_check.pytest_summary(log)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_and_without_dry_run_both_scripts_stop_at_once_in_one_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}  # no nvidia-smi on this PATH
    shell = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(tmp_path / "sh")],
                           capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    script = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    for done in (shell, script):
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "--dry-run" in done.stderr
    assert "no NVIDIA GPU" in shell.stderr and "CUDA is not available" in script.stderr
    assert not (tmp_path / "sh").exists() and not (tmp_path / "r.json").exists()


def test_the_dry_run_does_not_write_cpu_figures_into_the_gpu_docs(capsys):
    assert gpu_check.main(["--dry-run", "--write-docs"]) == 2
    assert "does not write docs/benchmarks.md" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_with_torch_compile_trains_and_decodes_compiled(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--json",
                           str(tmp_path / "r.json")], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["training"]["compiled"] is True and "compile_error" not in result["training"]
    assert result["decode"]["tokens_per_s"]["slmkit_compiled"]["batch_8"] > 0


def test_a_gpu_result_renders_with_the_mfu_verdict_and_every_engine(dry_run):
    _, result, _ = dry_run
    gpu = json.loads(json.dumps(result))  # a GPU run's JSON has the same shape, plus the compiled engine
    gpu.update(dry_run=False, cuda_tests="14 passed, 1 skipped in 95.00s")
    gpu["environment"].update(device_name="NVIDIA H200", gpu_count=1, memory_gib=139.8)
    gpu["peak"].update(flops=989e12, source="datasheet peak of the H200 (bf16)")
    gpu["training"].update(mfu=0.512, target_met=True, max_memory_gib=21.5, compiled=True)
    decode = gpu["decode"]
    decode["tokens_per_s"]["slmkit_compiled"] = {"batch_1": 900.0, "batch_8": 6400.0}
    decode["warmup_seconds"]["slmkit_compiled"] = 31.0
    decode["vs_transformers"]["slmkit_compiled"] = {"batch_1": 3.0, "batch_8": 2.0}
    text = gpu_check.render_results(gpu)
    assert text.startswith("GPU run, ") and "NVIDIA H200 (1 GPU(s), 139.8 GiB)" in text
    assert "**51.2%** (target 45%: met)" in text and "989.0 TFLOP/s (datasheet peak of the H200 (bf16))" in text
    assert "| slmkit compiled | 900 (3.00x) | 6,400 (2.00x) | 31.0 |" in text and "| peak memory | 21.5 GiB |" in text
    assert "14 passed, 1 skipped" in text
