"""``--portable``: the demo's numbers independent of the instruction sets a CPU offers, and the machine a result
came from.

A float32 result depends on the code path the libraries pick for the CPU: torch's ATen kernels (AVX2, AVX-512 or
the default build) and MKL's matrix products (Intel's and AMD's CPUs get different kernels) add in different
orders. Over hundreds of sampled RL steps the last-bit differences change which tokens are sampled, so two
machines give different runs. ``--portable`` re-executes the command with the one code path every x86-64 CPU has:
ATen's default kernels, MKL's conditional numerical reproducibility in its COMPATIBLE branch (documented by Intel
as the same results on all Intel and compatible processors) and oneDNN limited to SSE4.1. It costs about 2-2.6x
the time. The variables must be set before torch loads, hence the re-execution.

Measured: on one machine the portable numbers do not move with the instruction sets MKL and libm may use
(tests/test_demo_portable.py), but an Intel Xeon and an AMD EPYC machine still gave different portable runs
(docs/demo.md, "Machines and reproduction"): the flag narrows what a result depends on, it does not remove the machine.
"""

from __future__ import annotations

import os
import platform
import sys

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
FLAG = "--portable"


def is_portable() -> bool:
    """This process runs with the portable code paths (the variables were set before torch loaded)."""
    return all(os.environ.get(key) == value for key, value in PORTABLE_ENV.items())


def ensure_portable(argv: list[str]) -> None:
    """When ``argv`` asks for ``--portable`` and this process does not have the portable code paths, re-execute
    ``python -m bnpo.demo <argv>`` with them (this call then does not return); otherwise do nothing."""
    if FLAG in argv and not is_portable():
        os.execve(sys.executable, [sys.executable, "-m", "bnpo.demo", *argv], {**os.environ, **PORTABLE_ENV})


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what the platform says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """What a result's numbers depend on: the CPU, the torch build and code path, and whether it was portable."""
    import torch

    return {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "portable": is_portable(),
    }


def machine_line(m: dict[str, object]) -> str:
    """One line naming the machine of ``machine()``'s record, for the tables written beside a summary."""
    path = "`--portable` (the portable code path)" if m["portable"] else f"native ({m['cpu_capability']} kernels)"
    return f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}, {path}."
