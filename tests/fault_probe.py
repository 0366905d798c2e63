"""``python -m fault_probe --config ...``: rlscope.train with one more probe, ``explode``, that raises on its second
call (fault injection for tests/test_reliability.py; probe functions run on the main process only)."""

from rlscope.cadence import Cadence
from rlscope.probes import register


@register("explode", source="tokens", inputs=("entropies", "mask"), outputs=("calls",), cadence=Cadence(every=1))
def explode(batch, state: dict) -> dict:
    """Counts its calls; raises on the second."""
    state["calls"] = state.get("calls", 0) + 1
    if state["calls"] == 2:
        raise ZeroDivisionError("planted fault in probe explode")
    return {"calls": float(state["calls"])}


if __name__ == "__main__":
    from rlscope.train import main

    main()
