"""TrainConfig: presets, YAML and CLI precedence, type coercion, validation, and --help for every field."""
from dataclasses import fields

import pytest

from clipkit.train.config import PRESETS, TrainConfig, build_parser


def test_defaults_and_every_preset_are_valid():
    TrainConfig()
    for name, preset in PRESETS.items():
        cfg = TrainConfig.from_argv(["--preset", name, "--data-path", "x.tar"])
        assert all(getattr(cfg, k) == v for k, v in preset.items()), name


def test_tiny_preset_trains_the_embedded_default_on_synthetic_scenes():
    cfg = TrainConfig.from_argv(["--preset", "tiny"])
    assert cfg.model == "clipkit-tiny" and cfg.data == "synthetic" and cfg.loss == "clip"


def test_precedence_defaults_preset_yaml_flags(tmp_path):
    path = tmp_path / "run.yaml"
    # YAML spellings users write: dashes, 1e-3 (a string to YAML 1.1), yes/no booleans
    path.write_text("steps: 7\nbatch-size: 12\nlr: 1e-3\ntensorboard: no\nbeta2: none\n")
    cfg = TrainConfig.from_argv(["--preset", "nano", "--config", str(path), "--steps", "9"])
    assert cfg.model == "clipkit-nano"                      # from the preset
    assert cfg.batch_size == 12 and cfg.lr == 1e-3          # from the YAML, over the preset
    assert cfg.tensorboard is False and cfg.beta2 is None
    assert cfg.steps == 9                                   # the flag wins
    assert TrainConfig.from_argv(["--no-progress", "--compile", "--beta2", "0.99"]).beta2 == 0.99


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
        assert " ".join(f.metadata["help"].replace("%%", "%").split())[:30] in text, f.name


@pytest.mark.parametrize("kw, msg", [
    ({"loss": "triplet"}, "loss must be one of"),
    ({"hard_negatives": 2}, "needs --loss negclip"),
    ({"data": "csv"}, "needs --data-path"),
    ({"data": "parquet"}, "data must be"),
    ({"precision": "fp8"}, "precision must be"),
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"nonfinite": "ignore"}, "nonfinite must be"),
    ({"max_bad_fraction": 1.5}, "max_bad_fraction"),
    ({"steps": "many"}, "steps must be int"),
    ({"accum_steps": 0}, "accum_steps"),
])
def test_bad_values_are_refused_with_a_clear_message(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_unknown_fields_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['bacth_size'\]"):
        TrainConfig.from_dict({"bacth_size": 3})
    path = tmp_path / "bad.yaml"
    path.write_text("bacth_size: 3\n")
    with pytest.raises(SystemExit):
        TrainConfig.from_argv(["--config", str(path)])
    assert "bacth_size" in capsys.readouterr().err


def test_round_trip_through_a_dict():
    cfg = TrainConfig(loss="negclip", hard_negatives=3, precision="bf16")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_loss_names_are_the_registered_losses():
    """config.LOSS_NAMES lets a config be validated without importing torch; it must list LOSSES."""
    from clipkit.train.config import LOSS_NAMES
    from clipkit.train.losses import LOSSES
    assert tuple(LOSSES) == LOSS_NAMES


def test_recipe_check_tells_a_current_run_from_an_older_one(tmp_path, capsys):
    import json

    from clipkit.train import recipe
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**TrainConfig(**PRESETS["tiny"]).__dict__}))
    assert recipe.differs(run) == "" and recipe.main([str(run)]) == 0
    old = {**json.loads((run / "config.json").read_text())}
    old.pop("minimal_pairs")                       # a run saved before minimal pairs existed
    (run / "config.json").write_text(json.dumps(old))
    assert "minimal_pairs is None" in recipe.differs(run) and recipe.main([str(run)]) == 1
    assert "minimal_pairs" in capsys.readouterr().err
    assert "not readable" in recipe.differs(tmp_path / "missing")
