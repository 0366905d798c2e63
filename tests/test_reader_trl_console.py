"""The transformers/TRL console reader, on console text written here (tqdm bars and their carriage returns, the Trainer
header, eval and summary dicts, decoys): the step inference and what it says, detection against verl logs and CSV, and
--logging-steps through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlscope.analysis.readers import NoStepAxis, READERS, detect_format, read_run

HEADER = """***** Running training *****
  Num examples = 7,473
  Num Epochs = 1
  Num update steps per epoch = {per_epoch}
  Instantaneous batch size per device = 2
  Total train batch size (w. parallel, distributed & accumulation) = 4
  Gradient Accumulation steps = 2
  Total optimization steps = {total}
  Number of trainable parameters = 116,391,936
"""
DECOY = ("The tokenizer has new PAD/BOS/EOS tokens that differ from the model config. "
         "Updated tokens: {'eos_token_id': 248046, 'pad_token_id': 248044}.")


def bar(i: int, total: int) -> str:
    return f"{100 * i // total:3d}%|{'#' * (10 * i // total):<10}| {i}/{total} [00:{i:02d}<00:30,  1.50s/it]"


def g4(v: float) -> str:
    return f"{v:.4g}"  # newer transformers prints every float this way, as a string


def train_dict(step: int, per_epoch: int, strings: bool = True) -> dict:
    d = {"loss": 0.001 * step, "grad_norm": 0.2 + 0.01 * step, "learning_rate": 1e-5 * step,
         "completion_length": 200.0 + step, "rewards/reward_fn": 0.125 * step, "reward": 0.125 * step,
         "reward_std": 0.1768, "kl": 0.0 if step == 1 else 0.001 * step, "epoch": step / per_epoch}
    return {k: g4(v) for k, v in d.items()} if strings else d


def console(dicts: list[dict], total: int, buffered: bool = False, header: str = "") -> str:
    """A pasted console: header, decoy, tqdm bars joined by '\\r', each dict after a '\\r' of its bar (or,
    block-buffered, every dict after every bar)."""
    parts = [header, "Some warning\n", DECOY + "\n"]
    bars = [bar(i, total) for i in range(len(dicts) + 1)]
    if buffered:
        parts += ["\r".join(bars), "\n", *(f"{d}\n" for d in dicts)]
    else:
        for b, d in zip(bars, dicts):
            parts += [f"\r{b}\r{' ' * 49}\r{d}\n"]
        parts.append("\r" + bars[-1] + "\n")
    return "".join(parts)


@pytest.mark.parametrize("buffered", [False, True])
def test_string_dicts_tqdm_header_eval_summary(tmp_path, buffered):
    per_epoch, n = 1869, 6
    dicts = []
    for s in range(1, n + 1):
        dicts.append(train_dict(s, per_epoch))
        if s % 3 == 0:
            dicts.append({"eval_loss": g4(0.5 / s), "eval_reward": g4(0.1 * s), "eval_runtime": "1.5",
                          "epoch": g4(s / per_epoch)})
    dicts[0]["grad_norm"] = "nan"
    dicts[0]["model"] = "qwen"  # text: left out
    dicts.append({"train_runtime": "6702", "train_samples_per_second": "0.119", "train_steps_per_second": "0.03",
                  "train_loss": "0.002293", "epoch": g4(n / per_epoch)})
    path = tmp_path / "run.log"
    path.write_text(console(dicts, n, buffered, HEADER.format(per_epoch="1,869", total=n)))
    assert detect_format(path) == "trl_console"
    f = read_run(path)
    assert f.format == "trl_console"
    steps, reward = f.series("reward")
    assert steps.tolist() == [1, 2, 3, 4, 5, 6] and reward == pytest.approx([0.125 * s for s in range(1, 7)])
    assert f.series("response_length")[1].tolist() == [201, 202, 203, 204, 205, 206]
    assert f.name_of("response_length") == "completion_length" and f.name_of("kl") == "kl"
    assert f.series("eval_loss")[0].tolist() == [3, 6] and f.series("eval_reward")[1] == pytest.approx([0.3, 0.6])
    assert math.isnan(f.raw["grad_norm"][1][0]) and f.series("grad_norm")[0].tolist() == [2, 3, 4, 5, 6]
    assert f.raw["summary/train_runtime"][0].tolist() == [6] and f.raw["summary/train_loss"][1].tolist() == [0.002293]
    assert "train_runtime" not in f.raw and "model" not in f.raw and "eos_token_id" not in f.raw
    assert f.meta["framework"] == "transformers/TRL (console)"
    assert f.meta["step_source"] == "epoch x 1869 update steps per epoch from the Trainer header"
    assert f.meta["update_steps_per_epoch"] == 1869 and f.meta["total_steps"] == 6
    assert f.meta["gradient_accumulation_steps"] == 2 and f.meta["num_examples"] == 7473
    assert f.meta["train_dicts"] == 6 and f.meta["eval_dicts"] == 2 and f.meta["finished"]


def test_number_dicts_with_coarse_epochs_take_the_interval_from_the_header(tmp_path):
    """Older transformers: numbers, bare nan, the epoch rounded to 2 decimals (too coarse for epoch x steps per
    epoch): 4 dicts over 40 total steps are steps 10, 20, 30, 40, which the epochs agree with."""
    per_epoch, every = 1869, 10
    dicts = []
    for k in range(1, 5):
        d = train_dict(every * k, per_epoch, strings=False)
        d["epoch"] = round(d["epoch"], 2)
        dicts.append(d)
    dicts.append({"train_runtime": 60.0, "train_samples_per_second": 1.0, "train_steps_per_second": 0.5,
                  "train_loss": 0.02, "epoch": 0.02})
    text = console(dicts, 4, header=HEADER.format(per_epoch="1,869", total=40))
    text = text.replace("'reward_std': 0.1768", "'reward_std': nan", 1)
    path = tmp_path / "old.txt"
    path.write_text(text)
    f = read_run(path)
    assert f.series("loss")[0].tolist() == [10, 20, 30, 40]
    assert f.series("loss")[1] == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert math.isnan(f.raw["reward_std"][1][0]) and f.raw["summary/train_runtime"][0].tolist() == [40]
    assert f.meta["step_source"] == "order x logging_steps 10: 4 dicts over the header's 40 total optimization steps"
    # the same dicts from a run cut short (no summary, epochs that fit steps 1..4 as badly as 10..40): no guess at 10
    cut = tmp_path / "cut.txt"
    cut.write_text(console(dicts[:4], 4, header=HEADER.format(per_epoch="20", total=40)))
    g = read_run(cut)
    assert g.series("loss")[0].tolist() == [1, 2, 3, 4]
    assert g.meta["step_source"].startswith("order (logging_steps assumed 1")


def test_no_header_order_and_logging_steps(tmp_path):
    dicts = [{"loss": g4(0.1 * s), "reward": g4(0.2 * s), "epoch": g4(0.01 * s)} for s in range(1, 4)]
    path = tmp_path / "nb.log"
    path.write_text(console(dicts, 3))
    f = read_run(path)
    assert f.series("reward")[0].tolist() == [1, 2, 3]
    assert f.meta["step_source"] == ("order (logging_steps assumed 1; pass --logging-steps N if the run logged every "
                                     "N steps)")
    g = read_run(path, logging_steps=5)
    assert g.series("reward")[0].tolist() == [5, 10, 15] and g.meta["step_source"] == "order x logging_steps 5 as given"
    # logging_first_step: dicts at 1, 10, 20; the epochs tell it from 10, 20, 30
    first = [{"loss": "0.5", "epoch": g4(s / 500)} for s in (1, 10, 20)]
    (tmp_path / "first.log").write_text(console(first, 3))
    h = read_run(tmp_path / "first.log", logging_steps=10)
    assert h.series("loss")[0].tolist() == [1, 10, 20] and "logging_first_step" in h.meta["step_source"]
    with pytest.raises(ValueError, match="--logging-steps must be a positive"):
        read_run(path, logging_steps=0)


def test_step_key_resume_and_repeated_epochs(tmp_path):
    keyed = [{"loss": 0.1, "step": s, "epoch": 0.5} for s in (5, 10)]  # the step key wins over everything
    (tmp_path / "keyed.log").write_text(console(keyed, 2, header=HEADER.format(per_epoch="10", total=10)))
    f = read_run(tmp_path / "keyed.log", logging_steps=3)
    assert f.series("loss")[0].tolist() == [5, 10] and "step" not in f.raw
    assert f.meta["step_source"] == "the dicts' 'step' key (logging_steps 3 was not needed)"
    resumed = "  Continuing training from global step 50\n" + console([{"loss": "0.1"}, {"loss": "0.2"}], 2)
    (tmp_path / "resumed.log").write_text(resumed)
    assert read_run(tmp_path / "resumed.log").series("loss")[0].tolist() == [51, 52]
    # two dicts with the same epoch: epoch x steps per epoch would repeat a step, so the order is used, and said
    same = [{"loss": "0.1", "epoch": e} for e in ("0.1", "0.2", "0.2", "0.3")]
    (tmp_path / "same.log").write_text(console(same, 4, header=HEADER.format(per_epoch="10", total=100)))
    g = read_run(tmp_path / "same.log")
    assert g.series("loss")[0].tolist() == [1, 2, 3, 4] and "repeats a step" in g.meta["step_source"]


def test_detection_head_tail_and_against_verl_and_csv(tmp_path):
    # a long block-buffered log: over a MiB of bars, every dict at the end
    bars = "\r".join(bar(i % 100, 100) for i in range(25_000))
    (tmp_path / "long.log").write_text(HEADER.format(per_epoch="100", total=2) + bars + "\n"
                                       + "".join(f"{train_dict(s, 100)}\n" for s in (1, 2)))
    assert (tmp_path / "long.log").stat().st_size > 1 << 20  # the dicts lie past the first MiB
    assert detect_format(tmp_path / "long.log") == "trl_console"
    assert read_run(tmp_path / "long.log").series("loss")[0].tolist() == [1, 2]
    # a verl log with a metric-like python dict printed in it stays verl's
    verl = [f"(main_task pid=1) step:{s} - actor/entropy_loss:0.5 - critic/score/mean:0.1" for s in range(3)]
    (tmp_path / "verl.log").write_text("config: {'loss': 'x'}\n{'loss_agg_mode': 'token-mean', 'epoch': 1}\n"
                                       + "\n".join(verl) + "\n")
    assert detect_format(tmp_path / "verl.log") == "verl_log"
    # a TRL log with a stray verl-like line is ours
    (tmp_path / "trl.log").write_text(console([train_dict(s, 100) for s in (1, 2)], 2)
                                      + "step:3 - the model wrote this - step:4 - x\n")
    assert detect_format(tmp_path / "trl.log") == "trl_console"
    (tmp_path / "w.csv").write_text("step,loss,epoch\n1,0.5,0.1\n2,0.4,0.2\n")
    assert detect_format(tmp_path / "w.csv") == "csv" and not READERS.get("trl_console").detect(tmp_path / "w.csv")
    (tmp_path / "h.jsonl").write_text('{"loss": 0.5, "epoch": 0.1}\n')
    assert not READERS.get("trl_console").detect(tmp_path / "h.jsonl")


def test_no_training_dict(tmp_path):
    path = tmp_path / "empty.log"
    path.write_text(HEADER.format(per_epoch="10", total=10) + "\r".join(bar(i, 10) for i in range(11)) + "\n" + DECOY
                    + "\n{'eval_loss': '0.3'} trailing text\n")
    with pytest.raises(ValueError, match="cannot tell the log format"):
        detect_format(path)
    with pytest.raises(NoStepAxis, match="no training dict"):
        read_run(path, fmt="trl_console")


def test_logging_steps_through_the_cli(tmp_path, capsys):
    from rlscope.cli import build_parser, main

    dicts = [{"loss": g4(1.0 / s), "reward": g4(0.1 * s), "completion_length": g4(100.0 + s)} for s in range(1, 9)]
    path = tmp_path / "run.log"
    path.write_text(console(dicts, 8))
    assert main(["analyze", str(path), "--json", "--logging-steps", "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["format"] == "trl_console" and result["last_step"] == 32 and result["steps"] == 8
    assert result["meta"]["step_source"] == "order x logging_steps 4 as given"
    assert build_parser().parse_args(["report", str(path), "--logging-steps", "3"]).logging_steps == 3
    assert np.isclose(read_run(path).series("reward")[1][-1], 0.8)
