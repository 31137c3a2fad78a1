"""Per-part parameter groups and their learning-rate schedules."""

import math

import pytest
import torch
from torch import nn

from mmsent.cli import check_config
from mmsent.errors import ConfigError
from mmsent.optim import (
    build_param_groups,
    has_schedules,
    per_group_scheduler,
    plain_groups,
    schedule_factor,
)


def parts() -> dict[str, nn.Module]:
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    return {"text": nn.Linear(3, 2), "video": nn.Conv1d(1, 1, 3), "fusion": nn.Linear(4, 1), "frozen": frozen}


def test_one_group_per_trainable_part_with_its_own_options():
    settings = {"text": {"lr": 0.002, "schedule": {"name": "cosine", "epochs": 8}}, "video": {"lr": 0.01}}
    groups = build_param_groups(parts(), settings)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["text", "video", "fusion"], "a part with nothing to train gets no group"
    assert by_name["text"]["lr"] == 0.002 and "schedule" not in by_name["text"]
    assert by_name["video"]["lr"] == 0.01
    assert "lr" not in by_name["fusion"], "a part without settings takes the optimizer's defaults"
    optimizer = torch.optim.SGD(groups, lr=0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.002, 0.01, 0.5]


QUICKSTART_TEXT = ["-c", "pipelines/quickstart/base.yaml", "-c", "pipelines/quickstart/1_text.yaml"]


def test_numbers_given_as_strings_on_the_command_line_are_converted():
    config = check_config([*QUICKSTART_TEXT, "--model.init_args.param_groups={'text': {'lr': '0.006', 'momentum': '0.9'}}"])
    groups = plain_groups(config.model.init_args.param_groups)
    assert groups == {"text": {"lr": 0.006, "momentum": 0.9}}
    assert type(groups["text"]["lr"]) is float, "a checkpoint holds plain numbers"
    (group, *_) = build_param_groups(parts(), groups)
    assert group["lr"] == 0.006 and group["momentum"] == 0.9


@pytest.mark.parametrize(("settings", "message"), [
    ({"audio": {"lr": 0.1}}, r"unknown group\(s\) \['audio'\]"),
    ({"text": {"learning_rate": 0.1}}, r"param_groups: Group 'text' does not accept option 'learning_rate'"),
    ({"text": {"schedule": {"name": "cosine", "length": 3}}},
     r"param_groups: Parser key \"text.schedule\".*Option 'length' is not accepted"),
    ({"text": {"lr": "fast"}}, r"param_groups: Parser key \"text.lr\".*FiniteNonNegativeFloat"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        build_param_groups(parts(), settings)


@pytest.mark.parametrize(("group", "key", "message"), [
    ("{'learning_rate': 0.1}", "", "Option 'learning_rate' is not accepted"),
    ("{'lr': 'fast'}", 'Parser key "lr"', "FiniteNonNegativeFloat"),
    ("{'lr': 0.1, 'schedule': {'name': 'linear'}}", 'Parser key "name"', "Literal"),
    ("{'lr': 0.1, 'schedule': {'warmup_steps': 'ten'}}", 'Parser key "warmup_steps"', "NonNegativeInt"),
    ("{'lr': 0.1, 'layer_decay': 1.5}", 'Parser key "layer_decay"', "v>0 and v<=1"),
])
def test_the_command_line_refuses_a_bad_group_as_it_parses_naming_the_key(group, key, message):
    with pytest.raises(ConfigError) as raised:
        check_config([*QUICKSTART_TEXT, f"--model.init_args.param_groups={{'text': {group}}}"])
    assert 'Parser key "param_groups"' in str(raised.value) and key in str(raised.value)
    assert message in str(raised.value)


def test_a_modality_the_data_lacks_may_be_configured_when_optional():
    groups = build_param_groups(parts(), {"audio": {"lr": 0.1}}, optional=("audio",))
    assert [g["name"] for g in groups] == ["text", "video", "fusion"]


def test_schedules():
    step = schedule_factor({"name": "step", "step_size": 3, "gamma": 0.5})
    assert [step(e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cosine = schedule_factor({"name": "cosine", "epochs": 4, "min_factor": 0.2})
    assert cosine(0) == 1.0 and math.isclose(cosine(2), 0.6) and math.isclose(cosine(4), 0.2)
    assert math.isclose(cosine(9), 0.2), "after its epochs the cosine stays at its floor"
    warm = schedule_factor({"name": "exponential", "gamma": 0.5, "warmup": 2})
    assert [warm(e) for e in range(3)] == [0.5, 0.5, 0.25]
    assert schedule_factor(None)(5) == 1.0
    with pytest.raises(ValueError, match="schedule name must be one of"):
        schedule_factor({"name": "linear"})
    with pytest.raises(ValueError, match="a cosine schedule without epochs"):
        schedule_factor({"name": "cosine"})
    assert schedule_factor({"name": "cosine", "min_factor": 0.2}, max_epochs=4)(2) == cosine(2), "its length: max_epochs"


def test_each_group_follows_its_own_schedule():
    settings = {"video": {"lr": 0.01, "schedule": {"name": "step", "step_size": 1, "gamma": 0.5}},
                "text": {"lr": 0.002}}
    optimizer = torch.optim.SGD(build_param_groups(parts(), settings), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = per_group_scheduler(optimizer, settings)
    rates = []
    for _ in range(3):
        rates.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert [r["video"] for r in rates] == pytest.approx([0.01, 0.005, 0.0025])
    assert [r["text"] for r in rates] == [0.002] * 3
    assert [r["fusion"] for r in rates] == [0.1] * 3
    assert has_schedules(settings) and not has_schedules({"text": {"lr": 0.1}}) and not has_schedules(None)
