import pytest

from conftest import RECIPES
from rlscope.recipe import parse_recipe


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses_and_has_its_launch_line(path):
    run_args, cfg, model_args = parse_recipe(["--config", str(path), "--bf16", "false", "--use_cpu", "true"])
    header = path.read_text().split("\n")[:8]
    assert any("Launch:" in line for line in header), f"{path.name}: no launch line in the header"
    assert cfg.max_steps > 0 and model_args.model_name_or_path


def test_dapo_recipes_have_all_four_parts():
    for name in ("tiny_dapo.yaml", "tiny_sft_then_dapo.yaml"):
        _, cfg, _ = parse_recipe(["--config", str(RECIPES / name)])
        assert cfg.epsilon_high > cfg.epsilon  # clip-higher
        assert cfg.loss_type == "dapo"  # token-level loss
        assert cfg.overlong_buffer_len > 0  # overlong shaping
        assert cfg.dynamic_sampling  # dynamic sampling
        assert cfg.steps_per_generation > 1 or cfg.num_iterations > 1  # off-policy: the clip acts


def test_unknown_recipe_key_is_named_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "tiny_dapo.yaml").read_text() + "learning_rat: 1.0e-5\n")
    with pytest.raises(ValueError, match=r"unknown recipe key 'learning_rat' in .*bad\.yaml\. Did you mean 'learning_rate'\?"):
        parse_recipe(["--config", str(bad)])


def test_command_line_overrides_the_recipe():
    _, cfg, _ = parse_recipe(["--config", str(RECIPES / "tiny_dapo.yaml"), "--max_steps", "3"])
    assert cfg.max_steps == 3


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule .warm_star.*Did you mean .warm_start."):
        parse_recipe(["--config", str(RECIPES / "tiny_dapo.yaml"), "--schedule", "warm_star"])
