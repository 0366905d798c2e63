"""LoRA adapters (PEFT): which weight matrices carry one, their effective weight W = W_0 + s B A, the exact SVD of the
low-rank update, the drift of an adapter's own directions, and the base model (adapters off) without a second copy.

Hu et al. 2021 (LoRA): a frozen W_0 (out x in) is adapted by dW = s B A with B (out x r), A (r x in) and s = alpha / r
(rsLoRA, Kalajdzievski 2023: alpha / sqrt(r)) -- PEFT's ``scaling``. QLoRA (Dettmers et al. 2023) stores W_0 in 4 bits;
its float weight is PEFT's own dequantization. An update of rank <= q has its SVD from two thin QRs and a q x q SVD
(:func:`lowrank_svd`): no m x n matrix is formed.

Layers are recognised by what they hold (``base_layer``, ``lora_A``, ``lora_B``, ``scaling``), so rlscope does not
import peft; the names are PEFT's (``base_model.model.<name>.base_layer.weight``, ``...lora_A.<adapter>.weight``)
and the probes report a matrix under its plain name (``<name>.weight``, as in the model without adapters).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch

PEFT_PREFIX = "base_model.model."


def plain_name(name: str) -> str:
    """A parameter's name in the model without adapters: PEFT's wrapper prefix and ``.base_layer`` left out."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return name.replace(".base_layer.", ".")


@dataclass
class LoraMatrix:
    """One adapted weight matrix: the parameter names of its frozen base weight and of the active adapter's A and B,
    the layer itself (``module``), the adapter's name, rank and scaling, and whether the base weight is stored
    transposed (``fan_in_fan_out``: GPT-2's Conv1D)."""

    name: str
    base: str
    a: str
    b: str
    module: torch.nn.Module
    adapter: str
    rank: int
    scaling: float
    transposed: bool = False


def _active(module) -> list[str]:
    names = getattr(module, "active_adapters", None) or getattr(module, "active_adapter", None) or []
    names = [names] if isinstance(names, str) else list(names)
    return [a for a in names if a in module.lora_A]


def find_lora(model) -> dict[str, LoraMatrix]:
    """The adapted weight matrices of ``model`` by plain name (empty for a model without adapters). One clear error
    for what the weight geometry cannot read: several active adapters, merged adapters, DoRA, LoRA on embeddings."""
    from rlscope.errors import UsageError

    params = dict(model.named_parameters())
    out: dict[str, LoraMatrix] = {}
    for prefix, module in model.named_modules():
        if not all(hasattr(module, key) for key in ("base_layer", "lora_A", "lora_B", "scaling")):
            continue
        active = _active(module)
        if not active:
            continue
        if len(active) > 1:
            raise UsageError(f"weights probe: {prefix} has {len(active)} active LoRA adapters {active}; the update "
                             f"of one adapter is measured: activate one (model.set_adapter(name))")
        adapter = active[0]
        if getattr(module, "merged", False):
            raise UsageError(f"weights probe: the adapter of {prefix} is merged into its base weight; unmerge it "
                             f"(model.unmerge_adapter()) so that W_0 and the update are apart")
        if getattr(module, "use_dora", {}).get(adapter):
            raise UsageError(f"weights probe: {prefix} is a DoRA adapter (a learned magnitude rescales W_0 + s B A); "
                             f"only LoRA is measured: leave {prefix.rsplit('.', 1)[-1]} out of the probe's patterns")
        base = f"{prefix}.base_layer.weight"
        a, b = f"{prefix}.lora_A.{adapter}.weight", f"{prefix}.lora_B.{adapter}.weight"
        if base not in params or a not in params or b not in params:
            raise UsageError(f"weights probe: {prefix} is a LoRA layer whose weights are not linear ones ({base}, "
                             f"{a}, {b}); LoRA on embeddings or convolutions is not measured")
        rank = int(getattr(module, "r", {}).get(adapter, params[a].shape[0]))
        out[plain_name(base)] = LoraMatrix(plain_name(base), base, a, b, module, adapter, rank,
                                           float(module.scaling[adapter]),
                                           bool(getattr(module, "fan_in_fan_out", False)))
    return out


def base_weight(lm: LoraMatrix) -> torch.Tensor:
    """The float base weight W_0 (out x in) of an adapted layer, read in place: dequantized when stored in 4 or 8 bits
    (QLoRA; PEFT's own dequantization), transposed when stored as (in x out)."""
    layer = lm.module.base_layer
    w = layer.weight
    if type(w).__name__ in ("Params4bit", "Int8Params") or hasattr(layer, "W_q"):
        from peft.utils.integrations import dequantize_module_weight

        w = dequantize_module_weight(layer)
    w = w.detach()
    return w.T if lm.transposed else w


def oriented(lm: LoraMatrix, base: torch.Tensor) -> torch.Tensor:
    """A gathered base weight in (out x in) orientation."""
    return base.T if lm.transposed else base


@dataclass
class LoraWeight:
    """W = ``base`` + ``scaling`` B A (out x in), kept as its parts: ``base`` the frozen W_0 of the layer, ``B`` (out x
    r), ``A`` (r x in)."""

    base: torch.Tensor
    B: torch.Tensor
    A: torch.Tensor
    scaling: float

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    def is_base(self) -> bool:
        """Whether the adapter adds nothing (B = 0, PEFT's initialisation): W is the base weight itself."""
        return not bool(self.B.detach().any())

    def dense(self, out: torch.Tensor) -> torch.Tensor:
        """W formed into ``out`` (its dtype and device): base, plus s B A by one rank-r product."""
        out.copy_(self.base)
        B = self.B.detach().to(device=out.device, dtype=out.dtype)
        A = self.A.detach().to(device=out.device, dtype=out.dtype)
        return out.addmm_(B, A, alpha=self.scaling)


def update_factors(w0: LoraWeight, wt: LoraWeight) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(L, R, s) with W_t - W_0 = s L R: L = [B_t, B_0], R = [A_t; -A_0] (float64, on W_t's device); only B_t, A_t
    when B_0 = 0 (PEFT's initialisation)."""
    if w0.scaling != wt.scaling:
        raise ValueError(f"LoRA update: the scaling changed between W_0 ({w0.scaling}) and W_t ({wt.scaling})")
    dev = wt.B.device
    f64 = dict(dtype=torch.float64, device=dev)
    L, R = wt.B.detach().to(**f64), wt.A.detach().to(**f64)
    if not w0.is_base():
        L = torch.cat([L, w0.B.detach().to(**f64)], dim=1)
        R = torch.cat([R, -w0.A.detach().to(**f64)], dim=0)
    return L, R, float(wt.scaling)


def lowrank_svd(L: torch.Tensor, R: torch.Tensor, scale: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD (U, S, V) of ``scale`` L R, L (m x q), R (q x n), in float64 without forming the m x n product:
    L = Q_L T_L and R^T = Q_R T_R (QR), so scale L R = Q_L (scale T_L T_R^T) Q_R^T and the q x q core's SVD
    C = U_c S V_c^T gives U = Q_L U_c, V = Q_R V_c (Golub and Van Loan, Matrix Computations, sec. 2.5 / 5.4: exact up
    to float64 rounding). S descending, q of them (zeros beyond the rank)."""
    L, R = L.to(torch.float64), R.to(torch.float64)
    QL, TL = torch.linalg.qr(L)
    QR_, TR = torch.linalg.qr(R.T)
    Uc, S, Vch = torch.linalg.svd(scale * (TL @ TR.T))
    return QL @ Uc, S, QR_ @ Vch.T


def column_basis(X: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor | None:
    """An orthonormal basis of X's column span (float64), or None when X is rank-deficient (e.g. B = 0 at the start)."""
    Q, T = torch.linalg.qr(X.detach().to(torch.float64))
    d = T.diagonal().abs()
    if d.numel() == 0 or not bool((d > rtol * max(float(d.max()), 1e-300)).all()) or float(d.max()) == 0:
        return None
    return Q


def adapter_bases(w: LoraWeight) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The adapter's own directions: orthonormal bases of span(B) (output side) and of A's row span (input side)."""
    return column_basis(w.B), column_basis(w.A.T)


def drift(prev: torch.Tensor | None, now: torch.Tensor | None) -> tuple[float, float]:
    """(mean, max) principal angle (radians) between two r-dim spans (NaN when either is missing)."""
    from rlscope.ritz import principal_angles

    if prev is None or now is None or prev.shape != now.shape:
        return math.nan, math.nan
    ang = principal_angles(prev.to(now.device), now)
    return float(ang.mean()), float(ang.max())


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """The base model inside the block: every adapter layer switched off (PEFT's ``enable_adapters(False)``, what
    ``PeftModel.disable_adapter()`` does), restored after -- the same parameters, no second copy. A no-op for a
    model without adapters."""
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "enable_adapters")]
    was = [bool(getattr(m, "disable_adapters", False)) for m in layers]
    grads = [(p, p.requires_grad) for m in layers for p in m.parameters()]  # PEFT's toggle resets them: kept as set
    try:
        for m in layers:
            m.enable_adapters(False)
        yield
    finally:
        for m, off in zip(layers, was):
            m.enable_adapters(not off)
        for p, g in grads:
            p.requires_grad_(g)


def is_adapter_dir(path) -> bool:
    from pathlib import Path

    return (Path(path) / "adapter_config.json").is_file()


def load_adapter(path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """A saved LoRA adapter (PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, e.g. a checkpoint of a
    LoRA run) as ``{plain name: (A, B, scaling)}``: scaling alpha / r (alpha / sqrt(r) with rsLoRA), r read from the
    tensors (so ``rank_pattern`` is honoured). One clear error for what is not LoRA on linear layers."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from rlscope.errors import MissingInput

    path = Path(path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    files = sorted(path.glob("adapter_model*.safetensors"))
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora") or not files:
        raise MissingInput(f"{path}: a {cfg.get('peft_type')}{' (DoRA)' if cfg.get('use_dora') else ''} adapter"
                           f"{'' if files else ' without adapter_model.safetensors'}; the weight geometry reads LoRA "
                           f"adapters saved as safetensors")
    if cfg.get("alpha_pattern"):
        raise MissingInput(f"{path}: alpha_pattern {cfg['alpha_pattern']} (a per-module alpha) is not read offline; "
                           f"measure the run live (the weights probe reads each layer's own scaling)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    out = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        b = tensors.get(key[:-len(".lora_A.weight")] + ".lora_B.weight")
        if b is None or a.dim() != 2:
            raise MissingInput(f"{path}: {key} has no matching lora_B (or is not a linear layer's)")
        r = a.shape[0]
        alpha = float(cfg.get("lora_alpha", r))
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[plain_name(key[:-len(".lora_A.weight")] + ".weight")] = (a, b, scaling)
    return out
