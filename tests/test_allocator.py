"""The training workers' malloc settings (sipl.training.allocator)."""

import platform
import resource

import pytest
import torch

from sipl.training.allocator import keep_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")


def _faults_of_steps(rounds: int) -> int:
    """Minor page faults of ``rounds`` mock training steps: eight 4 MiB activations held together, then freed."""
    floats = 4 * 1024 * 1024 // 4
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        activations = [torch.ones(floats) for _ in range(8)]
        del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_a_step_reuses_the_memory_the_last_step_freed():
    assert keep_freed_memory() is True
    _faults_of_steps(5)  # the heap grows to one step's peak
    faults = _faults_of_steps(20)
    # glibc's defaults return the 32 MiB heap top after every step (trim threshold: twice the 4 MiB blocks) and
    # fault all 20 × 8192 pages in again; kept, the next step finds them mapped
    assert faults < 8192, faults
