"""A CPU platform for verl's platform registry (``VERL_PLATFORM=cpu``).

verl 0.9.1 registers only CUDA, NPU and ROCm platforms; on a machine without an accelerator it falls
back to CUDA and every ``get_device_name()`` says ``"cuda"``. This platform makes verl's device
helpers say ``"cpu"`` and ``"gloo"`` instead, so that the FSDP engine, the device meshes and the
process groups are built for the CPU. Development and testing only: nothing here is tuned for speed.

Ray still has to see one logical ``GPU`` per training worker (verl's resource pools reserve one
accelerator per bundle): start Ray with ``ray_kwargs.ray_init.num_gpus=<n>``. No device is touched.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _cpu_device_module() -> types.ModuleType:
    """A ``torch.cuda``-shaped namespace for the CPU.

    verl calls ``get_torch_device().<fn>()`` for seeding, memory statistics and cache control;
    ``torch.cpu`` lacks most of those, so they are given here as no-ops or zeros.
    """
    module = types.ModuleType("bnpo_cpu_device")
    # False: verl asks this only to skip accelerator-memory bookkeeping, which the CPU has none of.
    module.is_available = lambda: False
    module.get_device_name = lambda *a, **k: "CPU"  # verl's FLOPS table has no CPU entry: MFU reads 0
    module.current_device = lambda: "cpu"
    module.device_count = lambda: 1
    module.set_device = _nothing
    module.synchronize = _nothing
    module.empty_cache = _nothing
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.get_rng_state = torch.get_rng_state
    module.set_rng_state = torch.set_rng_state
    module.memory_allocated = _zero
    module.memory_reserved = _zero
    module.max_memory_allocated = _zero
    module.max_memory_reserved = _zero
    module.reset_peak_memory_stats = _nothing
    module.reset_accumulated_memory_stats = _nothing
    module.set_per_process_memory_fraction = _nothing
    module.ipc_collect = _nothing
    module.mem_get_info = lambda *a, **k: (0, 0)
    module.Stream = torch.cpu.Stream
    module.Event = torch.cpu.Event
    module.current_stream = torch.cpu.current_stream
    module.stream = torch.cpu.stream
    return module


class PlatformCPU(PlatformBase):
    """verl platform for CPU-only hosts: device ``cpu``, collectives over ``gloo``."""

    _device_module = _cpu_device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: a CPU run is asked for with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return (None, None)

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # verl's ResourcePoolManager counts "GPU" (or "NPU") to size its pools, so the CPU run
        # reserves logical GPUs declared at ray.init; Ray never binds them to hardware here.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def register_platform() -> None:
    """Add ``cpu`` to verl's platform registry (idempotent; selection stays with VERL_PLATFORM)."""
    if PlatformRegistry.get(PLATFORM_NAME) is None:
        PlatformRegistry.register(PLATFORM_NAME)(PlatformCPU)
