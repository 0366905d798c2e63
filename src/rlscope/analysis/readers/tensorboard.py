"""TensorBoard event files (verl's and ROLL's default tracker; OpenRLHF's; ``torch.utils.tensorboard``), read with
TensorBoard's own ``EventAccumulator``: scalar summaries, and TF2-style scalar tensors. A ``train/`` prefix
(OpenRLHF's) is dropped, as the W&B and CSV readers do."""

from __future__ import annotations

from pathlib import Path

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import NoStepAxis, Reader, reader


def _name(tag: str) -> str:
    return tag[len("train/"):] if tag.startswith("train/") else tag


def _event_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if "tfevents" in path.name else []
    return sorted(path.glob("events.out.tfevents*")) or sorted(path.glob("*/events.out.tfevents*"))


@reader
class TensorBoardReader(Reader):
    name = "tensorboard"
    describe = "TensorBoard event files (events.out.tfevents.*, or a directory holding them)"

    def detect(self, path: Path) -> bool:
        return bool(_event_files(path))

    def read(self, path: Path) -> RunFrame:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.util import tensor_util

        files = _event_files(path)
        if not files:
            raise NoStepAxis(f"{path}: no TensorBoard event file (events.out.tfevents.*)")
        steps, names, values = [], [], []
        for file in files:  # one run may span several files (restarts); later files win for the same step
            acc = EventAccumulator(str(file), size_guidance={"scalars": 0, "tensors": 0})
            acc.Reload()
            tags = acc.Tags()
            for tag in tags.get("scalars", []):
                for ev in acc.Scalars(tag):
                    steps.append(ev.step), names.append(_name(tag)), values.append(ev.value)
            for tag in tags.get("tensors", []):
                for ev in acc.Tensors(tag):
                    arr = tensor_util.make_ndarray(ev.tensor_proto)
                    if arr.size == 1 and arr.dtype.kind in "fiu":
                        steps.append(ev.step), names.append(_name(tag)), values.append(float(arr.reshape(-1)[0]))
        if not steps:
            raise NoStepAxis(f"{path}: the event files hold no scalar summaries")
        return RunFrame.from_long(str(path), self.name, steps, names, values,
                                  meta={"framework": "TensorBoard", "files": [f.name for f in files]})
