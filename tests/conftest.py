import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


@pytest.fixture(scope="session")
def tiny_sft_path():
    """The cached warm-started tiny model the tiny recipes use (built once per machine, ~4 min)."""
    from rlscope.tinymodel import tiny_sft_model

    return tiny_sft_model("chainsum", {"seed": 0})


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    from rlscope.tinymodel import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run where CUDA is available and are skipped elsewhere (CI has no GPU): ``make gpu-check``."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
