"""The weights probe's device path, run on CPU where the same code runs (the GPU itself: tests/test_gpu.py): W_0
resident within a budget or streamed one matrix at a time, W_t read in place, the compute device chosen where the
weights live -- the numbers never depend on which."""

from __future__ import annotations

import torch

from rlscope.probes.weight_matrix import matrix_results
from rlscope.weight_geometry import ResidentW0, Snapshot, compute_device, full_parameters


def _matrices(tmp_path=None):
    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
    w0 = {n: (0.02 * torch.randn(300 + 40 * i, 280, generator=g)).to(torch.bfloat16) for i, n in enumerate(names)}
    wt = {n: (w.float() + 1e-3 * torch.randn(w.shape, generator=g)).to(torch.bfloat16) for n, w in w0.items()}
    snap = Snapshot.take(((n, w0[n]) for n in names), tmp_path, max_memory_bytes=None if tmp_path is None else 0)
    return names, snap, wt


def _run(names, res: ResidentW0, wt) -> list[dict]:
    cache: dict = {}
    out = []
    for _ in range(2):  # two probes: the second warm-started
        out.append([r.stats for r in matrix_results(((n, w0, wt[n]) for n, w0 in res.stream(names)), cache, k=8,
                                                    exact_below=64)])
    return out


def test_w0_resident_streamed_or_read_in_place_gives_the_same_numbers(tmp_path):
    names, snap, wt = _matrices()
    in_place = ResidentW0(snap, names, "cpu")  # the CPU path: the snapshot itself, no copy
    assert not in_place.stage and not in_place.resident
    all_resident = ResidentW0(snap, names, "cpu", budget=1 << 30, stage=True)
    assert set(all_resident.resident) == set(names)
    some = ResidentW0(snap, names, "cpu", budget=(300 + 340) * 280 * 2, stage=True)  # the budget holds two
    assert len(some.resident) == 2 and len(some.host) == 2
    streamed = ResidentW0(snap, names, "cpu", budget=0, stage=True)
    assert not streamed.resident
    runs = [_run(names, r, wt) for r in (in_place, all_resident, some, streamed)]
    assert all(r == runs[0] for r in runs[1:])
    # W_0 spilled to disk (memory-mapped, read back per matrix) streams the same
    names_d, snap_d, _ = _matrices(tmp_path / "w0")
    assert snap_d.on_disk
    assert _run(names_d, ResidentW0(snap_d, names_d, "cpu", budget=0, stage=True), wt) == runs[0]


def test_stream_hands_out_matrices_in_order_and_each_once():
    names, snap, _ = _matrices()
    res = ResidentW0(snap, names, "cpu", budget=0, stage=True)
    got = list(res.stream(list(reversed(names))))
    assert [n for n, _ in got] == list(reversed(names))
    for n, t in got:
        assert torch.equal(t, snap[n]) and t.data_ptr() != snap[n].data_ptr()  # a copy, as a GPU's would be
    assert list(res.stream([])) == []


def test_w_t_is_read_in_place_where_it_lives_and_the_device_follows_the_weights(tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_path))
    names = [n for n, _ in model.named_parameters() if n.endswith("q_proj.weight")]
    params = dict(model.named_parameters())
    for name, t in full_parameters(model, names, device=None):
        assert t.data_ptr() == params[name].data_ptr()  # no copy
    for name, t in full_parameters(model, names):  # the host path: a copy
        assert t.data_ptr() != params[name].data_ptr() and torch.equal(t, params[name].detach())
    assert compute_device(model, names).type == "cpu"
    assert compute_device(model, names, "cpu").type == "cpu"
