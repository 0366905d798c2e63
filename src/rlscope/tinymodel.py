"""The embedded default model: a small Qwen2 built from a config, with a character-level tokenizer, and its cache.

Nothing here touches a model hub. ``build_tiny(path)`` writes a ``save_pretrained`` directory that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` read back, so every code path
that loads a real model (recipes, DeepSpeed ZeRO-3 init, offline evaluation) is exercised on it. Recipes name it
``tiny``; ``tiny-sft`` is the same model after an SFT warm start on a task, built once per machine and cached under
``$RLSCOPE_CACHE`` (:func:`tiny_sft_model`).
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass
from pathlib import Path

TINY_SFT = "tiny-sft"  # the embedded model after a cached SFT warm start

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>"]
# Every printable ASCII character is one token: the synthetic task uses digits, + - = # , and lower-case words;
# the rest keeps the tokenizer usable on other small local data (GSM8K-style fixtures in the tests).
CHARACTERS = list(string.digits + string.ascii_letters + string.punctuation + " \n")

# A minimal chat template, so conversational datasets (real-model recipes) work on the tiny model too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% else %}<|assistant|>{% generation %}{{ message['content'] }}<eos>{% endgeneration %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of the embedded model (defaults: ~3M parameters, measured ~0.5 s per SFT step of 64 on 2 cores)."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    seed: int = 0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-unicode table (the alphabet of a byte-level BPE: space is "\u0120", newline "\u010a")."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` built with ``tokenizers``.

    It is a byte-level BPE with an empty merge list, so every ASCII character is one token. That shape matters:
    transformers 5 reloads any ``qwen2`` model's tokenizer as ``Qwen2Tokenizer`` (byte-level pre-tokenizer, NFC),
    whatever ``tokenizer_config.json`` says; a plain WordLevel tokenizer would silently lose its spaces on reload,
    this one reloads token-for-token identical (tested).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + [table[ord(c)] for c in CHARACTERS])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny(path: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Build, seed and ``save_pretrained`` the tiny Qwen2 and its tokenizer into ``path``; returns the path."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    path = Path(path)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    set_generation_tokens(model, tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "rlscope_tiny.json").write_text(json.dumps(asdict(spec), indent=2))
    return path


def set_generation_tokens(model, tokenizer) -> None:
    """The model's ``generation_config`` takes the character tokenizer's pad / eos tokens (and no bos)."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None


def is_tiny(name_or_path: str) -> bool:
    """The recipes name the embedded model ``tiny`` (built on demand inside the run directory)."""
    return name_or_path in ("tiny", "rlscope/tiny")


def cache_dir() -> Path:
    """Where built models are cached: ``$RLSCOPE_CACHE``, default ``~/.cache/rlscope``."""
    return Path(os.environ.get("RLSCOPE_CACHE", Path.home() / ".cache" / "rlscope"))


def tiny_sft_model(task_name: str = "chainsum", task_config: dict | None = None, steps: int = 300, lr: float = 1e-3,
                   seed: int = 0) -> Path:
    """The tiny model warm-started by ``steps`` SFT steps on the task, cached under :func:`cache_dir` (a file lock
    keeps concurrent processes from building it twice)."""
    from filelock import FileLock

    from rlscope.tasks import chainsum, get_task
    from rlscope.trainers.sft import run_sft

    task_config = dict(task_config or {})
    key = json.dumps({"task": task_name, "format": chainsum.FORMAT_VERSION, "cfg": task_config, "steps": steps,
                      "lr": lr, "seed": seed, "spec": asdict(TinySpec())}, sort_keys=True)
    path = cache_dir() / f"tiny-sft-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "config.json").exists():
            init = build_tiny(path.with_name(path.name + "-init"))
            run_sft(str(init), get_task(task_name, **task_config), path, steps=steps, learning_rate=lr, seed=seed,
                    disable_tqdm=True)
    return path


def load_policy(path: str):
    """``(model, tokenizer)`` from a model directory (or hub id), or ``tiny-sft`` (the cached warm-started tiny
    model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path == TINY_SFT:
        path = str(tiny_sft_model("chainsum", {"seed": 0}))
    else:
        from rlscope.preflight import check_model

        check_model(path, what="model")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
