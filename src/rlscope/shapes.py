"""Real model shapes with random weights: Qwen2 configs of Qwen2.5's sizes over rlscope's character tokenizer.

For timing checks at a real size without a model hub (``rlscope bench passk --shape``, ``rlscope bench overhead
--model``): :func:`build_shaped_model` makes a ``Qwen2ForCausalLM`` of a named shape (layers, hidden and
intermediate sizes, attention and KV heads as the released Qwen2.5 models have them) whose vocabulary is rlscope's
character tokenizer (:func:`rlscope.tinymodel.build_tokenizer`, ~100 tokens: the embedding and LM head are tiny, the
transformer body is full size), its weights random (seeded), created directly on the device. ``tiny`` is the
embedded tiny model's shape (:class:`rlscope.tinymodel.TinySpec`). :func:`save_shaped_model` writes it with
``save_pretrained`` and the tokenizer, so a recipe's ``model_name_or_path`` can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    """The transformer body of a Qwen2 model (``Qwen2Config`` fields)."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6


def _tiny() -> Shape:
    from rlscope.tinymodel import TinySpec

    s = TinySpec()
    return Shape(s.num_hidden_layers, s.hidden_size, s.intermediate_size, s.num_attention_heads,
                 s.num_key_value_heads, True, s.max_position_embeddings, 10_000.0, 1e-6)


# The released models' config.json values (Qwen/Qwen2.5-*): layers, hidden, intermediate, heads, KV heads, tied.
SHAPES: dict[str, Shape] = {
    "qwen2.5-0.5b": Shape(24, 896, 4864, 14, 2, tie_word_embeddings=True),
    "qwen2.5-1.5b": Shape(28, 1536, 8960, 12, 2, tie_word_embeddings=True),
    "qwen2.5-3b": Shape(36, 2048, 11008, 16, 2, tie_word_embeddings=True),
    "qwen2.5-7b": Shape(28, 3584, 18944, 28, 4, tie_word_embeddings=False),
}


def shape_names() -> list[str]:
    return ["tiny", *SHAPES]


def get_shape(name: str) -> Shape:
    """The :class:`Shape` called ``name`` (``tiny`` or a key of :data:`SHAPES`); an unknown name is one
    :class:`rlscope.registry.UnknownName` (a ``ValueError``) naming the closest known one."""
    from rlscope.registry import UnknownName

    if name == "tiny":
        return _tiny()
    if name not in SHAPES:
        raise UnknownName("model shape", name, shape_names())
    return SHAPES[name]


def is_shape(name: str) -> bool:
    return name in shape_names()


def shape_config(name: str, tokenizer=None, layers: int | None = None):
    """The ``Qwen2Config`` of shape ``name`` over ``tokenizer`` (default rlscope's character tokenizer):
    ``vocab_size = len(tokenizer)``, its pad / eos tokens. ``layers``: fewer (or more) layers than the shape has."""
    from transformers import Qwen2Config

    from rlscope.tinymodel import build_tokenizer

    shape = get_shape(name)
    tok = build_tokenizer() if tokenizer is None else tokenizer
    if layers is not None and layers < 1:
        raise ValueError(f"shape {name!r}: layers must be >= 1, got {layers}")
    return Qwen2Config(
        vocab_size=len(tok), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers if layers is None else int(layers),
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings, rope_theta=shape.rope_theta,
        rms_norm_eps=shape.rms_norm_eps, tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)


def default_dtype(device):
    """bf16 on a GPU, float32 on the CPU."""
    import torch

    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def build_shaped_model(shape: str, device="cpu", dtype=None, layers: int | None = None, seed: int = 0):
    """``(model, tokenizer)``: a random-weight Qwen2 of ``shape`` (:func:`shape_config`) created directly on
    ``device`` in ``dtype`` (default :func:`default_dtype`), in eval mode. The weights are seeded by ``seed`` (the
    caller's RNG state is left as it was); the same seed gives the same weights on the same device type."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlscope.tinymodel import build_tokenizer, set_generation_tokens

    tok = build_tokenizer()
    cfg = shape_config(shape, tok, layers)
    device = torch.device(device)
    dtype = default_dtype(device) if dtype is None else dtype
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        with device:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    set_generation_tokens(model, tok)
    model.eval()
    return model, tok


def save_shaped_model(shape: str, directory, device="cpu", dtype=None, layers: int | None = None,
                      seed: int = 0) -> Path:
    """Build (:func:`build_shaped_model`) and ``save_pretrained`` the model and its tokenizer into ``directory``;
    returns the directory."""
    model, tok = build_shaped_model(shape, device, dtype, layers, seed)
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return path
