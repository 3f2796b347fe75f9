"""A CPU platform for verl's platform registry (``VERL_PLATFORM=cpu``; docs/cpu-e2e.md).

verl 0.9.1 registers only CUDA, NPU and ROCm platforms and falls back to CUDA without an accelerator. This one makes
verl's device helpers say ``"cpu"`` and ``"gloo"``, so the FSDP engine, device meshes and process groups are built for
the CPU (testing only, not tuned). Ray still needs one logical ``GPU`` per worker (``ray_init.num_gpus``).
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _cpu_device_module() -> types.ModuleType:
    """A ``torch.cuda``-shaped namespace for the CPU.

    verl calls ``get_torch_device().<fn>()`` for seeding, memory statistics and cache control;
    ``torch.cpu`` lacks most of those, so they are given here as no-ops or zeros.
    """
    module = types.ModuleType("bnpo_cpu_device")
    for name in ("set_device", "synchronize", "empty_cache", "reset_peak_memory_stats",
                 "reset_accumulated_memory_stats", "set_per_process_memory_fraction", "ipc_collect"):
        setattr(module, name, _nothing)
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
        setattr(module, name, lambda *a, **k: 0)
    for name in ("Stream", "Event", "current_stream", "stream"):
        setattr(module, name, getattr(torch.cpu, name))
    # False: verl asks this only to skip accelerator-memory bookkeeping, which the CPU has none of.
    module.is_available = lambda: False
    module.get_device_name = lambda *a, **k: "CPU"  # verl's FLOPS table has no CPU entry: MFU reads 0
    module.current_device = lambda: "cpu"
    module.device_count = lambda: 1
    module.manual_seed = module.manual_seed_all = torch.manual_seed
    module.get_rng_state, module.set_rng_state = torch.get_rng_state, torch.set_rng_state
    module.mem_get_info = lambda *a, **k: (0, 0)
    return module


class PlatformCPU(PlatformBase):
    """verl platform for CPU-only hosts: device ``cpu``, collectives over ``gloo``."""

    _device_module = _cpu_device_module()
    device_name = vendor_name = property(lambda self: "cpu")
    device_module = property(lambda self: self._device_module)
    # no device to set, synchronise, profile or free
    set_device = synchronize = set_allocator_settings = empty_cache = profiler_start = profiler_stop = _nothing
    cudart = _nothing

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: a CPU run is asked for with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return (None, None)

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def ray_resource_name(self) -> str:
        # verl's ResourcePoolManager counts "GPU" (or "NPU") to size its pools, so the CPU run
        # reserves logical GPUs declared at ray.init; Ray never binds them to hardware here.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False


def register_platform() -> None:
    """Add ``cpu`` to verl's platform registry (idempotent; selection stays with VERL_PLATFORM)."""
    if PlatformRegistry.get(PLATFORM_NAME) is None:
        PlatformRegistry.register(PLATFORM_NAME)(PlatformCPU)
