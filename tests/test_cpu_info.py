"""``--dtype auto``: the precision each kind of CPU (and a GPU) gets, the one-line cost of an explicit bf16 where it
is emulated, fp16 on a CPU refused, and what ran written into the outputs (issue 30, part 1).

The choice is fed flag sets of real CPUs (no particular CPU needed); the commands run on this machine's CPU with
``MAGFACE_CPU_FLAGS`` standing in for the flags of another."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.backbones import build_backbone
from models.checkpoint import save_released
from utils.cpu_info import FLAGS_ENV, CpuInfo, choose_precision, read_cpu_info
from utils.feature_io import read_meta

REPO = Path(__file__).resolve().parents[1]

# flag sets (abridged to what matters) of the CPUs this project has run on, and two it has not
XEON_AMX = "fpu sse avx2 fma f16c avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
EPYC_ZEN4 = "fpu sse avx2 fma f16c avx512f avx512_vnni avx512_bf16 avx_vnni"
EPYC_AVX2 = "fpu sse avx avx2 fma f16c"  # issue 30's machine: bf16 ran at 0.30x the seed there
SKYLAKE_SP = "fpu sse avx2 fma f16c avx512f avx512bw avx512vl"  # AVX-512 without bf16
ALDER_LAKE = "fpu sse avx2 fma f16c avx_vnni"


def cpu(flags: str | None, model: str = "test CPU") -> CpuInfo:
    return CpuInfo(model, None if flags is None else frozenset(flags.split()), "test")


@pytest.mark.parametrize("flags, expected", [
    (XEON_AMX, "bf16"), (EPYC_ZEN4, "bf16"), (EPYC_AVX2, "fp32"), (SKYLAKE_SP, "fp32"), (ALDER_LAKE, "fp32"),
    (None, "fp32"),
])
def test_auto_on_each_kind_of_cpu(flags, expected):
    choice = choose_precision("auto", "cpu", cpu(flags))
    assert choice.dtype == expected and choice.warning is None and choice.device == "cpu"
    assert choice.line().startswith(f"precision {expected} on cpu, torch (auto: ")
    if flags is None:
        assert "could not be read" in choice.reason
    elif expected == "bf16":
        assert "native bf16" in choice.reason and "avx512_bf16" in choice.cpu_flags
    else:
        assert "no native bf16" in choice.reason and "avx2" in choice.reason


def test_auto_on_a_gpu_is_bf16_and_explicit_choices_are_kept():
    assert choose_precision("auto", "cuda").dtype == "bf16"
    for dtype in ("fp32", "bf16", "fp16"):
        choice = choose_precision(dtype, "cuda")
        assert (choice.dtype, choice.warning, choice.reason) == (dtype, None, "as asked")
    assert choose_precision("fp32", "cpu", cpu(XEON_AMX)).dtype == "fp32"


@pytest.mark.parametrize("flags", [EPYC_AVX2, SKYLAKE_SP, None])
def test_explicit_bf16_without_native_bf16_runs_after_one_line(flags):
    choice = choose_precision("bf16", "cpu", cpu(flags, "AMD EPYC 7B13"))
    assert choice.dtype == "bf16"
    assert "\n" not in choice.warning and "AMD EPYC 7B13" in choice.warning
    assert "3x slower than fp32" in choice.warning and "--dtype auto or fp32" in choice.warning


@pytest.mark.parametrize("flags", [XEON_AMX, EPYC_ZEN4])
def test_explicit_bf16_with_native_bf16_says_nothing(flags):
    assert choose_precision("bf16", "cpu", cpu(flags)).warning is None


def test_fp16_on_a_cpu_and_unknown_names_are_one_line_errors():
    with pytest.raises(ValueError, match=r"--dtype fp16 on a CPU: .* use --dtype auto"):
        choose_precision("fp16", "cpu", cpu(XEON_AMX))
    with pytest.raises(ValueError, match="choose from auto, fp32, bf16, fp16"):
        choose_precision("int4", "cpu", cpu(XEON_AMX))
    with pytest.raises(ValueError, match="choose from auto, fp32, bf16, fp16$"):
        choose_precision("int8", "cpu", cpu(XEON_AMX))  # only where the command has an int8 path


def test_int8_is_taken_on_a_cpu_and_refused_on_a_gpu_in_one_line():
    assert choose_precision("int8", "cpu", cpu(EPYC_AVX2), int8=True).dtype == "int8"
    with pytest.raises(ValueError, match=r"--dtype int8 runs on the CPU .* not on cuda: use --device cpu"):
        choose_precision("int8", "cuda", int8=True)


def test_read_cpu_info_parses_proc_cpuinfo_and_the_override(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                                      "processor\t: 1\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu\n")
    info = read_cpu_info(tmp_path / "cpuinfo", env={})
    assert info.model == "AMD EPYC 9B14" and info.flags == {"fpu", "avx2", "avx512_bf16"}  # the first core's
    assert info.speed_flags() == ["avx512_bf16", "avx2"]
    missing = read_cpu_info(tmp_path / "missing", env={})
    assert missing.flags is None and missing.model == "unknown"
    override = read_cpu_info(tmp_path / "cpuinfo", env={FLAGS_ENV: "avx2 fma"})
    assert override.flags == {"avx2", "fma"} and override.source == f"${FLAGS_ENV}"
    assert override.model == "AMD EPYC 9B14"


# --- the commands ---


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny checkpoint and a list of three 112x112 images."""
    root = tmp_path_factory.mktemp("faces")
    torch.manual_seed(0)
    ckpt = root / "r18w16.pth"
    save_released(ckpt, build_backbone("iresnet18_w16").eval(), None, 0, "iresnet18_w16")
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(root / f"f{i}.png"), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    (root / "img.list").write_text("".join(f"f{i}.png 0\n" for i in range(3)))
    return ckpt, root / "img.list"


def gen_feat(args: list[str], flags: str | None, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FLAGS_ENV}
    if flags is not None:
        env[FLAGS_ENV] = flags
    if cache is not None:
        env["MAGFACE_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "inference.gen_feat", "--cpu-mode", "--print-freq", "1000", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, expected, backend", [(EPYC_AVX2, "fp32", "onnxruntime"),
                                                      (EPYC_ZEN4, "bf16", "torch")])
def test_gen_feat_auto_prints_and_stores_what_ran(faces, tmp_path, flags, expected, backend):
    """The default on each kind of CPU (--cpu-mode: no GPU question): bf16 in PyTorch where it is native, else
    fp32 on the cached ONNX export; both within float tolerance of PyTorch's fp32."""
    ckpt, img_list = faces
    out, fp32 = tmp_path / "f.npz", tmp_path / "fp32.npz"
    done = gen_feat(["--resume", str(ckpt), "--inf_list", str(img_list), "--feat_list", str(out)], flags,
                    tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("precision ")]
    assert len(lines) == 1 and lines[0].startswith(f"precision {expected} on cpu, {backend} (auto: "), done.stdout
    assert "bf16 is emulated" not in done.stderr
    meta = read_meta(out)["precision"]
    assert (meta["dtype"], meta["requested"], meta["device"], meta["backend"]) == (expected, "auto", "cpu", backend)
    assert len(list((tmp_path / "cache").glob("*.fp32.onnx"))) == (backend == "onnxruntime")
    assert gen_feat(["--resume", str(ckpt), "--inf_list", str(img_list), "--feat_list", str(fp32), "--dtype", "fp32"],
                    flags).returncode == 0
    a, b = np.load(out)["features"], np.load(fp32)["features"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= (0.999 if expected == "bf16" else 0.99999), cos
    assert meta["cpu_flags"] == [f for f in ("avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2", "fma", "f16c")
                                 if f in flags.split()]


def test_gen_feat_explicit_bf16_on_an_avx2_cpu_warns_once_and_runs(faces, tmp_path):
    ckpt, img_list = faces
    out = tmp_path / "f.npz"
    done = gen_feat(["--resume", str(ckpt), "--inf_list", str(img_list), "--feat_list", str(out), "--dtype", "bf16"],
                    EPYC_AVX2)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("bf16 is emulated and about 3x slower than fp32 here") == 1
    assert read_meta(out)["precision"]["dtype"] == "bf16"


def test_gen_feat_fp16_on_a_cpu_is_one_line_before_the_model_loads(faces, tmp_path):
    ckpt, img_list = faces
    out = tmp_path / "f.npz"
    done = gen_feat(["--resume", str(tmp_path / "no_such.pth"), "--inf_list", str(img_list), "--feat_list", str(out),
                     "--dtype", "fp16"], None)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "--dtype fp16 on a CPU" in done.stderr  # not the missing file
    assert not out.exists()


def test_verification_report_records_the_precision(faces, tmp_path):
    from eval.bin_io import write_bin

    ckpt, img_list = faces
    images = [(img_list.parent / f"f{i}.png").read_bytes() for i in (0, 1, 2, 0)]
    write_bin(tmp_path / "tiny.bin", images, [True, False])
    env = {**{k: v for k, v in os.environ.items() if k != FLAGS_ENV}, FLAGS_ENV: EPYC_AVX2}
    done = subprocess.run([sys.executable, "-m", "eval.verification", "--bin", str(tmp_path / "tiny.bin"), "--resume",
                           str(ckpt), "--device", "cpu", "--folds", "2", "--json", str(tmp_path / "r.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "precision fp32 on cpu, torch (auto: no native bf16" in done.stderr  # stdout: the report only
    assert json.loads((tmp_path / "r.json").read_text())["precision"]["dtype"] == "fp32"


def test_choose_backend_takes_onnxruntime_only_for_the_default_on_a_cpu_without_native_bf16():
    from inference.feat_options import FeatOptions, choose_backend

    avx2, amx = cpu(EPYC_AVX2), cpu(XEON_AMX)

    def pick(cpu_info=avx2, gpu=False, ort=True, **kw):
        return choose_backend(FeatOptions(**kw), cpu_info, gpu, ort)[0]

    assert pick() == "onnxruntime" and pick(device="cpu") == "onnxruntime"
    assert pick(cpu_info=amx) == "torch"  # native bf16: PyTorch's bf16
    assert pick(cpu_info=cpu(None)) == "torch"  # flags unknown: PyTorch fp32, as before
    assert pick(gpu=True) == "torch" and pick(gpu=True, device="cpu") == "onnxruntime"
    assert pick(device="cuda") == "torch"
    assert pick(flip=True) == "torch" and pick(compile="on") == "torch"
    assert pick(ort=False) == "torch"
    assert pick(dtype="fp32") == "torch" and pick(dtype="bf16") == "torch"  # an explicit precision: PyTorch
    assert pick(backend="torch") == "torch" and pick(backend="onnxruntime", cpu_info=amx) == "onnxruntime"
    assert pick(dtype="int8", cpu_info=amx) == "onnxruntime"


def test_gen_feat_default_falls_back_to_torch_when_the_export_cannot_be_cached(faces, tmp_path):
    ckpt, img_list = faces
    (tmp_path / "a_file").write_text("not a folder\n")
    out = tmp_path / "f.npz"
    done = gen_feat(["--resume", str(ckpt), "--inf_list", str(img_list), "--feat_list", str(out)], EPYC_AVX2,
                    tmp_path / "a_file" / "cache")  # mkdir there fails: NotADirectoryError
    assert done.returncode == 0, done.stderr
    assert "could not be made or cached" in done.stderr and "PyTorch instead" in done.stderr
    assert read_meta(out)["precision"]["backend"] == "torch"
    explicit = gen_feat(["--resume", str(ckpt), "--inf_list", str(img_list), "--feat_list", str(tmp_path / "g.npz"),
                         "--backend", "onnxruntime"], EPYC_AVX2, tmp_path / "a_file" / "cache")
    assert explicit.returncode != 0 and "Traceback" not in explicit.stderr  # asked for: an error, not a fallback
