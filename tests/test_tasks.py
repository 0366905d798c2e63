import random

import pytest

from rlscope.tasks import chainsum, get_task


def test_demonstrations_are_correct_in_every_style():
    rng = random.Random(1)
    for _ in range(300):
        terms = chainsum.make_problem(rng, rng.randint(2, 8), 9)
        for style in ("direct", "scratch", "recheck"):
            demo = chainsum.demonstration(terms, style, rng)
            assert chainsum.reward(demo, sum(terms)) == 1.0, (terms, style, demo)
            if style == "recheck":
                assert "wait" in demo


def test_modular_chains_reduce_every_step_modulo_m():
    rng = random.Random(2)
    for _ in range(300):
        terms = chainsum.make_problem(rng, rng.randint(2, 8), 9)
        answer = sum(terms) % 10
        for style in ("direct", "scratch", "recheck"):
            demo = chainsum.demonstration(terms, style, rng, modulus=10)
            assert chainsum.reward(demo, answer) == 1.0, (terms, style, demo)
            if style == "scratch":  # each step: the first two numbers merged modulo 10, the rest copied
                rest = list(terms)
                for step in demo.split("#")[0].split(","):
                    rest = [(rest[0] + rest[1]) % 10] + rest[2:]
                    assert step == "+".join(map(str, rest))
            if style == "recheck":  # the slip is a wrong digit, the step after "wait" the right one
                slip, fixed = demo.split(",wait ")[0].split(",")[-1], demo.split(",wait ")[1].split(",")[0].split("#")[0]
                assert slip != fixed and all(0 <= int(x) < 10 for x in slip.split("+"))


def test_running_sum_scratchpads_write_each_prefix_sum_once():
    rng = random.Random(3)
    for _ in range(200):
        terms = chainsum.make_problem(rng, rng.randint(2, 8), 9)
        for modulus in (0, 10):
            demo = chainsum.demonstration(terms, "scratch", rng, modulus, scratch="running")
            want = [chainsum.answer_of(terms[:i + 1], modulus) for i in range(1, len(terms))]
            assert demo == ",".join(map(str, want)) + f"#{want[-1]}"
            re = chainsum.demonstration(terms, "recheck", rng, modulus, scratch="running")
            assert chainsum.reward(re, want[-1]) == 1.0 and ",wait " in re
    with pytest.raises(ValueError, match="Did you mean 'running'"):
        get_task("chainsum", scratch="runing")


def test_keyed_chains_label_every_term_in_the_prompt_and_the_scratchpad():
    rng = random.Random(4)
    assert chainsum.prompt_text([4, 8, 3, 2], keyed=True) == "a4+b8+c3+d2="
    assert chainsum.demonstration([4, 8, 3, 2], "scratch", rng, scratch="running", keyed=True) == "b12,c15,d17#17"
    assert chainsum.demonstration([4, 8, 3, 2], "scratch", rng, keyed=True) == "b12+c3+d2,c15+d2,d17#17"
    for _ in range(200):
        terms = chainsum.make_problem(rng, rng.randint(2, 9), 9)
        for scratch in ("running", "rewrite"):
            demo = chainsum.demonstration(terms, "recheck", rng, scratch=scratch, keyed=True)
            slip, fixed = demo.split(",wait ")[0].split(",")[-1], demo.split(",wait ")[1].split(",")[0].split("#")[0]
            assert chainsum.reward(demo, sum(terms)) == 1.0 and slip[0] == fixed[0] and slip != fixed
    task = get_task("chainsum", keyed=True, scratch="running", min_terms=2, max_terms=5, n_heldout=16)
    for row in task.rows("heldout") + task.rows("sft")[:50]:
        terms = chainsum.terms_of(row["prompt"])
        assert row["prompt"] == chainsum.prompt_text(terms, keyed=True) and int(row["answer"]) == sum(terms)
    assert task.score(task.demonstration(task.rows("heldout")[0]), task.rows("heldout")[0]) == 1.0
    with pytest.raises(ValueError, match="at most 26 terms"):
        chainsum.prompt_text(list(range(27)), keyed=True)


def test_curriculum_orders_the_training_split_and_fillers_open_some_demonstrations():
    spec = chainsum.ChainSumSpec(min_terms=2, max_terms=7, curriculum=((100, 2, 3), (50, 4, 5), (0, 6, 7)),
                                 filler_share=0.3)
    splits = chainsum.build_splits(seed=0, n_train=400, n_sft=2000, n_heldout=16, spec=spec)
    n = [r["n_terms"] for r in splits["train"]]
    assert len(n) == 400 and set(n[:100]) == {2, 3} and set(n[100:150]) == {4, 5} and set(n[150:]) == {6, 7}
    filled = [r for r in splits["sft"] if r["completion"].startswith(chainsum.FILLERS)]
    assert 0.25 < len(filled) / 2000 < 0.35
    assert all(chainsum.reward(r["completion"], r["answer"]) == 1.0 for r in splits["sft"])
    long = chainsum.build_splits(seed=0, n_train=10, n_sft=2000, n_heldout=4,
                                 spec=chainsum.ChainSumSpec(filler_share=0.5, filler_max=3))
    import re

    openings = [re.match(r"^(?:ok so |let me see, |hmm, )*", r["completion"]).group(0) for r in long["sft"]]
    repeats = [len(re.findall(r"ok so |let me see, |hmm, ", o)) for o in openings if o]
    assert set(repeats) == {1, 2, 3} and all(chainsum.reward(r["completion"], r["answer"]) for r in long["sft"])
    # the defaults draw exactly what they drew before these options existed (hash of the splits from that code)
    import hashlib
    import json

    default = chainsum.build_splits(seed=3, n_train=200, n_sft=200, n_heldout=16)
    assert hashlib.sha256(json.dumps(default, sort_keys=True).encode()).hexdigest()[:16] == "ece07b5362183019"


def test_reward_requires_the_final_answer_marker():
    assert chainsum.reward("1+2=3#3", "3") == 1.0
    assert chainsum.reward("1+2=3#4", "3") == 0.0
    assert chainsum.reward("#3 and more", "3") == 0.0
    assert chainsum.reward("", "3") == 0.0
    assert chainsum.reward("#3#5", "5") == 1.0


def test_splits_are_seeded_disjoint_and_heldout_has_harder_problems():
    a = chainsum.build_splits(seed=3, n_train=500, n_sft=500, n_heldout=64)
    b = chainsum.build_splits(seed=3, n_train=500, n_sft=500, n_heldout=64)
    assert a == b
    held = {r["prompt"] for r in a["heldout"]}
    assert not held & {r["prompt"] for r in a["train"]}
    assert not held & {r["prompt"] for r in a["sft"]}
    spec = chainsum.ChainSumSpec()
    hard = [r for r in a["heldout"] if r["difficulty"] == "hard"]
    assert len(hard) == 16 and all(r["n_terms"] > spec.max_terms for r in hard)
    assert max(r["n_terms"] for r in a["train"]) == spec.max_terms
    styles = {r["style"] for r in a["sft"]}
    assert styles == {"direct", "scratch", "recheck"}
    lengths = {len(r["completion"]) for r in a["sft"]}
    assert max(lengths) - min(lengths) > 30  # how much to reason varies: length is free to move


def test_task_reward_funcs_read_columns_and_name_missing_ones():
    task = get_task("chainsum", n_train=10, n_sft=10)
    f = task.reward_funcs()[0]
    assert f(["1+2=3#3", "#4"], answer=["3", "3"]) == [1.0, 0.0]
    with pytest.raises(KeyError, match="answer"):
        f(["#3"], solution=["3"])


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(ValueError, match="Did you mean 'chainsum'"):
        get_task("chainsun")


def test_missing_dataset_column_is_named():
    from datasets import Dataset

    task = get_task("chainsum", n_train=10, n_sft=10)
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\]"):
        task.check_columns(Dataset.from_list([{"prompt": "1+1="}]), "train")
