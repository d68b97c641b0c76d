"""Peak extra memory of one call: what the benchmark reports and the memory tests assert.

On CUDA it is the caching allocator's peak above what was allocated before the call. On the CPU torch's
allocations are invisible to tracemalloc, so it is the process's peak resident set above its resident set
before the call: Linux's high-water mark (VmHWM) is reset by writing "5" to /proc/self/clear_refs; where that
is not possible a thread samples the RSS every millisecond (which can miss a very short peak).

glibc keeps freed memory for reuse and raises its mmap threshold after large frees, so without care a buffer
that reuses an earlier call's memory adds nothing to the RSS: `track_large_allocations()` fixes the threshold
(allocations above it are mmapped and returned on free) so the RSS follows the live buffers. It is process-wide;
the benchmark calls it once at start, so every implementation is timed and measured under the same setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch

T = TypeVar("T")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def track_large_allocations(threshold_bytes: int = 1 << 20) -> bool:
    """Make glibc mmap every allocation above `threshold_bytes` and return it on free; False where not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _can_reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def measure(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, int]:
    """(fn(), peak bytes allocated during the call beyond what was resident before it; -1 if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, max(0, torch.cuda.max_memory_allocated(device) - before)
    if _can_reset_hwm():
        before = _status_kib("VmRSS")
        result = fn()
        return result, max(0, _status_kib("VmHWM") - before) * 1024
    return _sampled(fn)


def _sampled(fn: Callable[[], T]) -> tuple[T, int]:
    try:
        import psutil
    except ImportError:  # no /proc and no psutil: unknown
        return fn(), -1
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return result, max(0, peak[0] - before)
