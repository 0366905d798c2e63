"""What the benchmarks share: the device sync before a clock is read, a free local port for gloo ranks, and the
printing of a result (its JSON object last)."""

from __future__ import annotations

import json


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_result(result: dict, as_json: bool) -> None:
    if not as_json:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    print(json.dumps(result))
