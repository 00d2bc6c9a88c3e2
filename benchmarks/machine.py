"""The machine line every benchmark prints with its tables."""

from __future__ import annotations

import os
import platform

import diffusers
import torch


def machine_description() -> str:
    """One markdown line: CPU, core count, OS, Python, torch and diffusers versions, device used."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"_Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, {device}; torch threads {torch.get_num_threads()}._"
    )
