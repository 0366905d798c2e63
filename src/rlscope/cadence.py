"""When a probe runs: :class:`Cadence`, the one schedule type of the probe engine.

Three independent parts, one meaning each:

* ``every`` -- a period in optimizer steps: N > 0 runs at steps N, 2N, 3N, ... of the trainer; 0 runs at no step in
  between (start and end still apply). Negative periods are an error.
* ``at_start`` -- once before the first update (step 0 of a fresh run; a resumed run is past its start).
* ``at_end`` -- once after the last step, unless the probe already ran at that step.

A cadence with none of the three is *off*. Written forms (recipes, ``rlscope.attach`` options, the CLI): an int sets
the period and keeps the probe's declared start/end; ``"off"``; a string of parts joined by ``,`` or ``+`` such as
``"50+end"`` or ``"start,end"`` (exactly those parts); a mapping ``{"every": 50, "at_end": false}`` (over the
declared default).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from rlscope.registry import check_names

_PART = re.compile(r"^(?:every\s*)?(\d+)$")


@dataclass(frozen=True)
class Cadence:
    every: int = 0
    at_start: bool = False
    at_end: bool = False

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ValueError(f"cadence: 'every' must be a whole number of steps >= 0 (0 = no periodic runs), "
                             f"got {self.every!r}")

    @property
    def off(self) -> bool:
        return not (self.every or self.at_start or self.at_end)

    def due(self, step: int) -> bool:
        """Whether a periodic run falls on trainer step ``step`` (>= 1)."""
        return self.every > 0 and step > 0 and step % self.every == 0

    @classmethod
    def parse(cls, spec, default: "Cadence | None" = None) -> "Cadence":
        """A cadence from its written form (see the module docstring); ``default`` is the probe's declared one."""
        default = default or cls()
        if isinstance(spec, Cadence):
            return spec
        if spec is None or spec is True:
            return default
        if spec is False:
            return cls()
        if isinstance(spec, int):
            return dataclasses.replace(default, every=spec)
        if isinstance(spec, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            check_names("cadence field", spec, known)
            return dataclasses.replace(default, **spec)
        if isinstance(spec, str):
            text = spec.strip().lower()
            if text in ("off", "never", "none"):
                return cls()
            if text.isdigit():
                return dataclasses.replace(default, every=int(text))
            every, start, end = 0, False, False
            for part in filter(None, (p.strip() for p in re.split(r"[,+]", text))):
                m = _PART.match(part)
                if m:
                    every = int(m.group(1))
                elif part in ("start", "at_start"):
                    start = True
                elif part in ("end", "at_end"):
                    end = True
                else:
                    raise ValueError(f"cadence {spec!r}: unknown part {part!r}; write e.g. '50', '50+end', "
                                     f"'start,end' or 'off'")
            return cls(every, start, end)
        raise ValueError(f"cadence: cannot read {spec!r} (an int, 'off', '50+start+end' or a mapping)")

    def __str__(self) -> str:
        if self.off:
            return "off"
        parts = [f"every {self.every}"] if self.every else []
        parts += ["start"] * self.at_start + ["end"] * self.at_end
        return "+".join(parts)
