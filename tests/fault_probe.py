"""``python -m fault_probe --config ...``: rlscope.train with two more probes (fault injection for
tests/test_reliability.py): ``explode`` raises on its second call (on the main process, where it runs), and
``explode_on_rank1`` -- a per-rank probe, run on every rank -- raises on rank 1 only, between two collectives, at its
second call."""

from rlscope.cadence import Cadence
from rlscope.probes import register
from rlscope.probes.reduce import sums


@register("explode", source="tokens", inputs=("entropies", "mask"), outputs=("calls",), cadence=Cadence(every=1))
def explode(batch, state: dict) -> dict:
    """Counts its calls; raises on the second."""
    state["calls"] = state.get("calls", 0) + 1
    if state["calls"] == 2:
        raise ZeroDivisionError("planted fault in probe explode")
    return {"calls": float(state["calls"])}


@register("explode_on_rank1", source="tokens", inputs=("entropies", "mask"), outputs=("n_tokens",),
          cadence=Cadence(every=1), per_rank=True)
def explode_on_rank1(batch, state: dict) -> dict:
    """Counts the step's tokens; on its second call rank 1 raises after the first collective."""
    state["calls"] = state.get("calls", 0) + 1
    (n,) = sums(batch.comm, [float(batch.mask.sum())])
    if state["calls"] == 2 and batch.comm.rank == 1:
        raise ZeroDivisionError("planted fault in probe explode_on_rank1")
    (again,) = sums(batch.comm, [float(batch.mask.sum())])
    return {"n_tokens": again}


if __name__ == "__main__":
    from rlscope.train import main

    main()
