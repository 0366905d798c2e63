"""TRL / transformers ``trainer_state.json``: the ``log_history`` list the Trainer keeps (and saves with every checkpoint).

Old and new TRL metric names are both read as they are (the alias table maps them). The end-of-training summary
(``train_runtime``, ``train_loss``, ...) goes under ``summary/``; evaluation entries keep their ``eval_`` names.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import NoStepAxis, Reader, reader

SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


@reader
class TrainerStateReader(Reader):
    name = "trainer_state"
    describe = "a transformers/TRL trainer_state.json (or a checkpoint directory holding one)"

    def _file(self, path: Path) -> Path | None:
        if path.is_dir():
            return path / "trainer_state.json" if (path / "trainer_state.json").exists() else None
        if path.suffix == ".json":
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            return path if b'"log_history"' in head or path.name == "trainer_state.json" else None
        return None

    def detect(self, path: Path) -> bool:
        return self._file(path) is not None

    def read(self, path: Path) -> RunFrame:
        file = self._file(path) or path
        try:
            state = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        history = state.get("log_history") if isinstance(state, dict) else None
        if not isinstance(history, list):
            raise NoStepAxis(f"{file}: no log_history list (is it a trainer_state.json?)")
        steps, names, values = [], [], []
        for entry in history:
            if not isinstance(entry, dict) or "step" not in entry:
                continue
            summary = any(k in entry for k in SUMMARY_KEYS[:3])
            for key, value in entry.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                steps.append(int(entry["step"]))
                names.append(f"summary/{key}" if summary else key)
                values.append(float(value))
        if not steps:
            raise NoStepAxis(f"{file}: log_history has no entry with a 'step' and a numeric metric")
        return RunFrame.from_long(str(file), self.name, steps, names, values,
                                  meta={"framework": "transformers/TRL", "global_step": state.get("global_step"),
                                        "logging_steps": state.get("logging_steps")})
