"""Benchmarks (``rlscope bench ...``): each prints one JSON object as its last line.

One module per benchmark (``step``, ``overhead``, ``passk``, ``weights``, ``lora``, ``schedules``, ``analyze``,
``gather``); ``common`` holds what they share and ``spectra`` the synthetic weights of ``weights`` and ``lora``. The
modules import torch and the trainers inside their functions only, so importing this package stays light.
"""

from __future__ import annotations

from rlscope.bench.analyze import bench_analyze, small_log_seconds
from rlscope.bench.common import print_result
from rlscope.bench.gather import bench_gather, synthetic_step
from rlscope.bench.lora import bench_lora
from rlscope.bench.overhead import HEAVY_WEIGHTS_EVERY, OVERHEAD_DEVICE_FLAGS, bench_overhead
from rlscope.bench.passk import bench_passk
from rlscope.bench.schedules import bench_schedules
from rlscope.bench.spectra import _model_w0, _rl_update, _spiked_matrix
from rlscope.bench.step import bench_step
from rlscope.bench.weights import bench_weights

__all__ = ["HEAVY_WEIGHTS_EVERY", "OVERHEAD_DEVICE_FLAGS", "bench_analyze", "bench_gather", "bench_lora",
           "bench_overhead", "bench_passk", "bench_schedules", "bench_step", "bench_weights", "print_result",
           "small_log_seconds", "synthetic_step", "_model_w0", "_rl_update", "_spiked_matrix"]
