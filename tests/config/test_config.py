import textwrap

import pytest

from assigndet.config import ConfigKeyError, ConfigTypeError, get_cfg, register_config_adder


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_have_detectron2_names_and_values():
    cfg = get_cfg()
    assert cfg.VERSION == 2
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,)
    assert cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(0.001)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    assert cfg.OUTPUT_DIR == "./output" and cfg.SEED == -1


def test_every_default_key_is_documented():
    """Each key assignment in defaults.py carries a one-line comment."""
    import inspect

    from assigndet.config import defaults

    undocumented = [
        line
        for line in inspect.getsource(defaults).splitlines()
        if line.startswith("_C.")
        and " = " in line
        and "#" not in line
        and not line.endswith("= CfgNode()")  # a section header, not a key
    ]
    assert undocumented == []


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 0.5
    assert b.SOLVER.BASE_LR == 0.001


def test_base_chain_with_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "root.yaml", "SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 100\nSEED: 3\n")
    _write(tmp_path / "sub" / "mid.yaml", "_BASE_: ../root.yaml\nSOLVER:\n  MAX_ITER: 200\n")
    leaf = _write(
        tmp_path / "sub" / "leaf.yaml",
        """\
        _BASE_: mid.yaml
        MODEL:
          RESNETS:
            DEPTH: 18
        INPUT:
          MIN_SIZE_TRAIN: [256, 288]
        """,
    )
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert cfg.SOLVER.BASE_LR == 0.02  # from the root
    assert cfg.SOLVER.MAX_ITER == 200  # the middle file wins over the root
    assert cfg.SEED == 3
    assert cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.INPUT.MIN_SIZE_TRAIN == (256, 288)  # list in YAML, tuple like the default


def test_base_list_merges_left_to_right(tmp_path):
    _write(tmp_path / "a.yaml", "SOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: 10\n")
    _write(tmp_path / "b.yaml", "SOLVER:\n  BASE_LR: 0.2\n")
    top = _write(tmp_path / "top.yaml", "_BASE_: [a.yaml, b.yaml]\n")
    cfg = get_cfg()
    cfg.merge_from_file(top)
    assert cfg.SOLVER.BASE_LR == 0.2 and cfg.SOLVER.MAX_ITER == 10


def test_overrides_from_list():
    cfg = get_cfg()
    cfg.merge_from_list(
        ["SOLVER.BASE_LR", "0.02", "MODEL.WEIGHTS", "/x/y.pth", "SOLVER.STEPS", "(10, 20)"]
    )
    assert cfg.SOLVER.BASE_LR == 0.02
    assert cfg.MODEL.WEIGHTS == "/x/y.pth"
    assert cfg.SOLVER.STEPS == (10, 20)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_RL: 0.1\n")
    top = _write(tmp_path / "top.yaml", "_BASE_: base.yaml\n")
    cfg = get_cfg()
    with pytest.raises(ConfigKeyError) as err:
        cfg.merge_from_file(top)
    message = str(err.value)
    assert "SOLVER.BASE_RL" in message
    assert str(tmp_path / "base.yaml") in message  # the file that holds the bad key
    assert "SOLVER.BASE_LR" in message  # a suggestion


def test_wrong_type_names_key_file_and_expected_type(tmp_path):
    path = _write(tmp_path / "bad.yaml", "SOLVER:\n  BASE_LR: 1\n")
    cfg = get_cfg()
    with pytest.raises(ConfigTypeError) as err:
        cfg.merge_from_file(path)
    message = str(err.value)
    assert "SOLVER.BASE_LR" in message and path in message
    assert "expected float" in message and "got int" in message


def test_override_errors():
    cfg = get_cfg()
    with pytest.raises(ConfigKeyError, match="MODEL.NOPE.*command-line"):
        cfg.merge_from_list(["MODEL.NOPE", "1"])
    with pytest.raises(ConfigTypeError, match="expected int"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ValueError, match="odd number"):
        cfg.merge_from_list(["SOLVER.MAX_ITER"])
    with pytest.raises(ValueError, match="_BASE_"):
        cfg.merge_from_list(["_BASE_", "x.yaml"])


def test_missing_file_and_missing_base(tmp_path):
    cfg = get_cfg()
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        cfg.merge_from_file(str(tmp_path / "nowhere.yaml"))
    top = _write(tmp_path / "top.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml.*top.yaml"):
        cfg.merge_from_file(top)


def test_frozen_config_refuses_changes():
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(AttributeError):
        cfg.merge_from_list(["SOLVER.BASE_LR", "0.5"])


def test_method_keys_registered_by_an_adder_merge(tmp_path):
    from assigndet.config import _CONFIG_ADDERS, CfgNode

    @register_config_adder
    def add_toy_config(cfg):
        cfg.MODEL.TOY = CfgNode()
        cfg.MODEL.TOY.ALPHA = 0.5

    try:
        path = _write(tmp_path / "toy.yaml", "MODEL:\n  TOY:\n    ALPHA: 0.25\n")
        cfg = get_cfg()
        cfg.merge_from_file(path)
        assert cfg.MODEL.TOY.ALPHA == 0.25
    finally:
        _CONFIG_ADDERS.remove(add_toy_config)
    assert "TOY" not in get_cfg().MODEL


def test_dump_round_trip(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.STEPS", "(5, 7)"])
    path = tmp_path / "dumped.yaml"
    path.write_text(cfg.dump())
    again = get_cfg()
    again.merge_from_file(str(path))
    assert again.SOLVER.STEPS == (5, 7)
    assert again == cfg


def test_detectron2_eval_tag_loads(tmp_path):
    """detectron2's Base-RetinaNet.yaml writes anchor sizes with a Python eval tag."""
    path = _write(
        tmp_path / "retina.yaml",
        """\
        MODEL:
          ANCHOR_GENERATOR:
            SIZES: !!python/object/apply:eval ["[[x, x * 2**(1.0/3)] for x in [32, 64]]"]
        """,
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES[1][0] == 64
    with pytest.raises(Exception, match="python"):
        get_cfg().merge_from_file(path, allow_unsafe=False)


def test_tuple_strings_in_yaml_are_parsed_like_yacs(tmp_path):
    path = _write(
        tmp_path / "d2.yaml",
        """\
        DATASETS:
          TRAIN: ("coco_2017_train",)
          TEST: ("coco_2017_val",)
        MODEL:
          META_ARCHITECTURE: "GeneralizedRCNN"
        """,
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"


def test_load_config_applies_file_then_overrides_and_freezes(tmp_path):
    from assigndet.config import load_config

    path = _write(tmp_path / "c.yaml", "SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 7\n")
    cfg = load_config(path, ["SOLVER.MAX_ITER", "9"])
    assert cfg.SOLVER.BASE_LR == 0.02 and cfg.SOLVER.MAX_ITER == 9
    assert cfg.is_frozen()
