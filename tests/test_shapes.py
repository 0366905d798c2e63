"""Real model shapes with random weights (rlscope.shapes) and the benchmarks that use them, at one layer on the CPU."""

from __future__ import annotations

import pytest

QWEN = {  # (layers, hidden, intermediate, heads, KV heads, tied) of the released Qwen2.5 configs
    "qwen2.5-0.5b": (24, 896, 4864, 14, 2, True),
    "qwen2.5-1.5b": (28, 1536, 8960, 12, 2, True),
    "qwen2.5-3b": (36, 2048, 11008, 16, 2, True),
    "qwen2.5-7b": (28, 3584, 18944, 28, 4, False),
}


@pytest.mark.parametrize("name", sorted(QWEN))
def test_shape_configs_are_the_released_shapes_over_the_character_tokenizer(name):
    from rlscope.shapes import shape_config
    from rlscope.tinymodel import build_tokenizer

    tok = build_tokenizer()
    cfg = shape_config(name, tok)
    got = (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
           cfg.num_key_value_heads, cfg.tie_word_embeddings)
    assert got == QWEN[name]
    assert cfg.vocab_size == len(tok) and cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    assert shape_config(name, tok, layers=2).num_hidden_layers == 2


def test_tiny_shape_is_the_embedded_tiny_model():
    from rlscope.shapes import shape_config
    from rlscope.tinymodel import TinySpec

    cfg, spec = shape_config("tiny"), TinySpec()
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.num_key_value_heads) == (spec.num_hidden_layers, spec.hidden_size, spec.intermediate_size,
                                         spec.num_attention_heads, spec.num_key_value_heads)


def test_unknown_shape_is_one_error_with_the_closest_name():
    from rlscope.registry import UnknownName
    from rlscope.shapes import build_shaped_model

    with pytest.raises(UnknownName, match=r"unknown model shape 'qwen2.5-1.5'. Did you mean 'qwen2.5-1.5b'\?"):
        build_shaped_model("qwen2.5-1.5")
    with pytest.raises(ValueError, match="layers must be >= 1, got 0"):
        build_shaped_model("qwen2.5-0.5b", layers=0)


def test_built_model_is_seeded_leaves_the_rng_alone_and_saves(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlscope.shapes import build_shaped_model, save_shaped_model

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    model, tok = build_shaped_model("qwen2.5-0.5b", "cpu", layers=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.dtype == torch.float32 and not model.training and model.config.num_hidden_layers == 1
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (4864, 896)
    again, _ = build_shaped_model("qwen2.5-0.5b", "cpu", layers=1)
    other, _ = build_shaped_model("qwen2.5-0.5b", "cpu", layers=1, seed=1)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in again.named_parameters())
    assert not torch.equal(params["model.layers.0.self_attn.q_proj.weight"],
                           dict(other.named_parameters())["model.layers.0.self_attn.q_proj.weight"])
    path = save_shaped_model("qwen2.5-0.5b", tmp_path / "m", "cpu", torch.bfloat16, layers=1)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(dict(loaded.named_parameters())["model.layers.0.mlp.up_proj.weight"],
                       params["model.layers.0.mlp.up_proj.weight"].to(torch.bfloat16))
    assert AutoTokenizer.from_pretrained(path)("1+2=")["input_ids"] == tok("1+2=")["input_ids"]


def test_bench_passk_on_a_shape_generates_the_same_tokens_in_both_arms():
    """A random-weight shape: full length in both arms (no sample ends early), so both generate prompts x n x
    max_new_tokens tokens; the JSON keeps its keys and adds the arms' tokens."""
    from rlscope.bench import bench_passk

    r = bench_passk(prompts=2, n=2, repeats=1, shape="qwen2.5-0.5b", layers=1, max_new_tokens=5)
    assert r["shape"] == "qwen2.5-0.5b" and r["device"] == "cpu" and r["dtype"] == "float32" and r["full_length"]
    assert r["rlscope_tokens"] == r["bare_tokens"] == r["bare_sample_tokens"] == 2 * 2 * 5
    assert r["max_new_tokens"] == 5 and r["ratio"] > 0 and 0 <= r["pass@1"] <= 1
