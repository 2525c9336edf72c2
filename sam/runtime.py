"""Where and how this process computes: device, precision, seeds, RNG state, versions.

A leaf of the package (it imports only ``sam.errors``): the trainer, the sharpness tools
and the benchmark scripts share these helpers without reaching into one another.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from torch import Tensor

from sam.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name}: not a torch device; use auto, cpu, cuda or cuda:N"
                        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available: use device=auto or cpu")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or "cpu (<model name>, <N> threads)" (the model from /proc/cpuinfo
    where there is one: its instruction set decides amp=auto's precision)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers (recorded in results.json)."""
    import hydra
    import torchvision

    from sam import __version__

    return {"sam": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__,
            "python": platform.python_version()}


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch (all devices); deterministic algorithms when asked."""
    torch.manual_seed(seed)
    if deterministic:  # cuBLAS is deterministic only with a fixed workspace (CUDA docs)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def set_fp32_precision(mode: str) -> None:
    """How CUDA computes fp32 convolutions and matmuls for the rest of the process: "tf32"
    (TensorFloat-32 on Ampere and later), "ieee" (strict fp32), or "default" (torch's own,
    left untouched). torch >= 2.9's per-backend ``fp32_precision`` flags where they exist,
    else the ``allow_tf32`` ones (the two may not be mixed)."""
    if mode == "default":
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"


def fp32_precision(device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, str]:
    """What this process's convolutions and matmuls compute in, for results.json: the
    autocast dtype (bf16, fp16) under amp, else "tf32" where the CUDA card has TF32 units
    and the flags allow it, else "fp32"."""
    if amp_dtype is not None:
        name = precision_name(amp_dtype)
        return {"conv": name, "matmul": name}
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return {"conv": "fp32", "matmul": "fp32"}
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        flags = {"conv": conv.fp32_precision, "matmul": torch.backends.cuda.matmul.fp32_precision}
        return {k: "tf32" if v == "tf32" else "fp32" for k, v in flags.items()}
    return {"conv": "tf32" if torch.backends.cudnn.allow_tf32 else "fp32",
            "matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"}


def rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """This process's torch RNG state: the CPU generator and ``device``'s CUDA one."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Tensor | None], device: torch.device) -> None:
    """Put back an ``rng_state`` (the CUDA part only on a CUDA device)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- precision


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (not emulated): a CUDA card with bf16
    units (Ampere and later), or a CPU with AVX512-BF16 or AMX instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch's own CPU-feature probes (private: a torch without them counts as no bf16)
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return device.type == "cpu" and any(probe is not None and probe() for probe in probes)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` setting (auto, bf16, fp16, off) on this device, None
    for fp32; auto is bf16 where the device computes it natively, else fp32."""
    if amp == "auto":
        amp = "bf16" if native_bf16(device) else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def grad_scaler(amp_dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (CUDA; ``validate`` has refused fp16 elsewhere), else None."""
    return torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None


def amp_settings(amp: str, device: torch.device):
    """(autocast dtype or None, GradScaler or None) for the ``amp`` setting on ``device``."""
    dtype = autocast_dtype(amp, device)
    return dtype, grad_scaler(dtype)


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """The training precision as results.json records it: bf16, fp16 (autocast) or fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")
