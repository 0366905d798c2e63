import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlscope.tinymodel import build_tiny


def test_build_save_reload_is_seeded_and_roundtrips(tmp_path, tiny_path):
    again = build_tiny(tmp_path / "again")
    a = AutoModelForCausalLM.from_pretrained(tiny_path)
    b = AutoModelForCausalLM.from_pretrained(again)
    assert a.config.model_type == "qwen2"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert 2_000_000 < sum(p.numel() for p in a.parameters()) < 5_000_000


def test_character_tokenizer_reloads_identically_and_has_a_chat_template(tiny_path):
    from rlscope.tinymodel import build_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)  # transformers 5 reloads a qwen2 tokenizer as Qwen2Tokenizer
    built = build_tokenizer()
    text = "12+3+2,15+2,wait 17#17 A\nB  c {x}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == built(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text  # one token per character, spaces kept
    assert tok.unk_token_id not in ids
    chat = tok.apply_chat_template([{"role": "user", "content": "1+2="}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>1+2=<|assistant|>"
    full = tok.apply_chat_template([{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "#3"}],
                                   tokenize=False)
    assert full.endswith("<|assistant|>#3<eos>")
    assert tok.pad_token_id != tok.eos_token_id
