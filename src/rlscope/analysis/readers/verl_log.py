"""verl's console log: one line per step, ``step:N - key:value - key:value ...`` (often behind a Ray prefix such as
``(main_task pid=...)`` and ANSI colour codes, which are stripped). Non-numeric values are left out."""

from __future__ import annotations

import re
from pathlib import Path

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import NoStepAxis, Reader, reader

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STEP_LINE = re.compile(r"(?:^|\s)step:(\d+)\s+-\s+(.*)$")


@reader
class VerlLogReader(Reader):
    name = "verl_log"
    describe = "a verl console log (lines 'step:N - key:value - ...')"

    def detect(self, path: Path) -> bool:
        if not path.is_file() or path.suffix in (".json", ".csv", ".jsonl", ".wandb"):
            return False
        with open(path, "rb") as f:
            head = f.read(1 << 20).decode("utf-8", "replace")
        return any(STEP_LINE.search(ANSI.sub("", line)) for line in head.splitlines())

    def read(self, path: Path) -> RunFrame:
        steps, names, values = [], [], []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = STEP_LINE.search(ANSI.sub("", line.rstrip("\n")))
                if not m:
                    continue
                step = int(m.group(1))
                for part in m.group(2).split(" - "):
                    key, sep, value = part.strip().rpartition(":")
                    if not sep or not key:
                        continue
                    try:
                        v = float(value)
                    except ValueError:
                        continue
                    steps.append(step), names.append(key), values.append(v)
        if not steps:
            raise NoStepAxis(f"{path}: no 'step:N - key:value' line")
        return RunFrame.from_long(str(path), self.name, steps, names, values, meta={"framework": "verl"})
