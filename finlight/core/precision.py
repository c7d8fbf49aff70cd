"""``trainer.precision: auto`` (the CLI's default): bf16 autocast where the hardware runs it faster, fp32 elsewhere.

bf16-mixed pays on CUDA devices with bf16 and on CPUs whose matmuls have bf16 instructions (AVX-512 BF16,
AMX): measured there, a MiniLM training step takes 0.5–0.6 s against 1.0 s in fp32. On an AVX2-only CPU the
same autocast is about 7x *slower* than fp32, so it is never switched on blindly. Any explicit
``trainer.precision`` wins. Weights stay fp32 (``-mixed``); modules compute losses and metrics in fp32.

`choose_precision` is the pure decision (flags in, choice and reason out); `detect_hardware` reads the flags.
``FINLIGHT_AUTO_PRECISION=<precision>`` pins what ``auto`` means on a machine (the test suite pins ``32-true``
so its numbers do not depend on the CPU it runs on).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import lightning.pytorch as pl

from finlight.core.run_dir import run_dir

AUTO = "auto"
ENV_PIN = "FINLIGHT_AUTO_PRECISION"
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names
RECORD = "precision.json"


@dataclass
class PrecisionChoice:
    precision: str  # what the Trainer gets
    reason: str
    requested: str = AUTO
    hardware: dict = field(default_factory=dict)


def choose_precision(device: str, cpu_capability: str = "", cpu_flags: Iterable[str] = (),
                     cuda_bf16: bool = False, cuda_name: str = "") -> tuple[str, str]:
    """``(precision, reason)`` for the device a run trains on (``cuda``, ``cpu`` or anything else).

    ``cpu_capability`` is ``torch.backends.cpu.get_cpu_capability()`` (the kernels torch dispatches: AVX2,
    AVX512, …), ``cpu_flags`` the CPU's feature flags as /proc/cpuinfo names them."""
    if device == "cuda":
        name = f"CUDA device {cuda_name}" if cuda_name else "CUDA device"
        if cuda_bf16:
            return "bf16-mixed", f"{name} supports bf16"
        return "32-true", f"{name} has no bf16 (fp16 would need loss scaling)"
    if device != "cpu":
        return "32-true", f"{device}: no measured bf16 speed-up"
    flags = {f.lower() for f in cpu_flags}
    fast = [f for f in BF16_CPU_FLAGS if f in flags]
    capability = (cpu_capability or "unknown").upper()
    if fast and capability.startswith("AVX512"):
        return "bf16-mixed", f"CPU has {' + '.join(fast)}, torch kernels {capability}"
    if fast:
        return "32-true", f"CPU has {' + '.join(fast)} but torch runs {capability} kernels (ATEN_CPU_CAPABILITY?)"
    return "32-true", f"CPU without AVX-512 BF16 / AMX (torch kernels {capability}): bf16 would run slower"


def cpu_flags() -> set[str]:
    """The CPU's feature flags: /proc/cpuinfo on Linux, else what torch can tell (AVX-512 BF16, AMX)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import torch

    found = set()
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
              "avx512f": "_is_avx512_supported", "avx2": "_is_avx2_supported"}
    for flag, probe in probes.items():
        if getattr(torch.cpu, probe, lambda: False)():
            found.add(flag)
    return found


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def _device(accelerator) -> str:
    """The device Lightning's ``accelerator`` setting will train on."""
    import torch

    name = accelerator if isinstance(accelerator, str) else "auto" if accelerator is None else "other"
    if name in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if name == "auto" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu" if name in ("auto", "cpu") else name


def resolve_precision(requested, accelerator=None) -> PrecisionChoice:
    """``requested`` (the config's ``trainer.precision``) as the Trainer's precision, with the reason."""
    if requested != AUTO:
        return PrecisionChoice(requested, "set explicitly", requested=str(requested))
    pinned = os.environ.get(ENV_PIN)
    if pinned:
        return PrecisionChoice(pinned, f"{ENV_PIN}={pinned}")
    import torch

    device = _device(accelerator)
    hardware: dict = {"device": device}
    if device == "cuda":
        hardware.update(cuda_name=torch.cuda.get_device_name(), cuda_bf16=bool(torch.cuda.is_bf16_supported()))
        precision, reason = choose_precision("cuda", cuda_bf16=hardware["cuda_bf16"], cuda_name=hardware["cuda_name"])
    else:
        flags = cpu_flags()
        hardware.update(cpu_capability=cpu_capability(),
                        cpu_flags=sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))))
        precision, reason = choose_precision(device, hardware["cpu_capability"], flags)
    return PrecisionChoice(precision, reason, hardware=hardware)


class PrecisionRecord(pl.Callback):
    """Writes ``precision.json`` (requested, chosen, why, the hardware flags) into the run folder."""

    def __init__(self, choice: PrecisionChoice):
        self.choice = choice

    def setup(self, trainer, pl_module, stage: str) -> None:
        folder: Optional[str] = run_dir(trainer)
        if not trainer.is_global_zero or folder is None:
            return
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, RECORD), "w") as handle:
            json.dump({**asdict(self.choice), "trainer_precision": trainer.precision}, handle, indent=2)
