"""Run configs: strict schema, one-line errors naming the key, shipped configs parse."""

import os

import pytest
import yaml

from blockseg import BlocksegError
from blockseg.pipeline.config import load_config, parse_config
from blockseg.pipeline.workflow import DEMO_CONFIG, plan

from _helpers import REPO

CONFIGS = REPO / "configs"


def minimal(**extra):
    return {"run_dir": "/tmp/x", "data": {"synth": {"shape": [16, 32, 32]}}, **extra}


def test_defaults_filled_and_frozen():
    cfg = parse_config(minimal())
    # no decoder given: the checkpoint's recommended one, chosen when the checkpoint is read (runcheck)
    assert cfg.segment.decoder is None and cfg.model.checkpoint == "demo"
    assert cfg.resolved()["predict"]["dtype"] is None and cfg.resolved()["segment"]["decoder"] is None
    with pytest.raises(Exception):
        cfg.name = "other"


@pytest.mark.parametrize(
    "raw, key",
    [
        (minimal(segmnt={}), "segmnt: unknown key"),
        (minimal(segment={"halo": "big"}), "segment.halo"),
        (minimal(segment={"decoder": "nope"}), "segment.decoder"),
        (minimal(predict={"dtype": "int7"}), "predict.dtype"),
        (minimal(predict={"batch_size": 0}), "predict.batch_size"),
        ({"run_dir": "/tmp/x", "data": {}}, "data"),
        ({"data": {"synth": {}}}, "run_dir"),
        (minimal(evaluate={"thresholds": "all"}), "evaluate.thresholds"),
        (minimal(cluster={"workers": "two"}), "cluster.workers"),
    ],
)
def test_bad_configs_name_the_key(raw, key):
    with pytest.raises(BlocksegError) as e:
        parse_config(raw, "cfg.yaml")
    msg = str(e.value)
    assert key in msg and "\n" not in msg and msg.startswith("cfg.yaml: config key")


def test_load_config_anchors_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({"run_dir": "../runs/a", "data": {"image": "img.zarr", "ground_truth": "gt.zarr"}}))
    cfg = load_config(p, {"segment.halo": 8})
    assert cfg.run_dir == str(tmp_path / "runs" / "a")
    assert cfg.data.image == str(tmp_path / "sub" / "img.zarr")
    assert cfg.segment.halo == 8


def test_load_config_errors(tmp_path):
    with pytest.raises(BlocksegError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: [unclosed\n")
    with pytest.raises(BlocksegError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(BlocksegError, match="mapping"):
        load_config(lst)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    raw = yaml.safe_load((CONFIGS / name).read_text())
    if "run_dir" in raw:  # a run config (blockseg run)
        assert os.path.isabs(load_config(CONFIGS / name).run_dir)
    else:  # a training config (blockseg train)
        from blockseg.train.config import load_config as load_train

        assert load_train(CONFIGS / name).iterations > 0


def test_demo_yaml_is_the_demo_command():
    from_file = load_config(CONFIGS / "demo.yaml").resolved()
    built = parse_config({"run_dir": from_file["run_dir"], **DEMO_CONFIG}).resolved()
    assert from_file == built


def test_plan_fresh_and_forced(tmp_path):
    cfg = parse_config({**minimal(), "run_dir": str(tmp_path / "r"), "model": {"checkpoint": str(tmp_path / "m.pt")}})
    assert plan(cfg) == {"data": "run", "predict": "run", "segment": "run", "evaluate": "run"}
    with pytest.raises(BlocksegError, match="--only segment"):
        plan(cfg, only="segment")
    with pytest.raises(BlocksegError, match="--from"):
        plan(cfg, from_stage="train")


def test_train_sections_of_paper_configs_load_for_blockseg_train():
    from blockseg.pipeline.config import load_train_config as load_train
    from blockseg.train.config import load_config as load_training_config

    z = load_train(CONFIGS / "nucmm_z.yaml")
    assert z.model.representations == ["B", "C", "D"] and z.optimizer.name == "sgd" and z.optimizer.lr == 0.02
    assert len(z.data.train) == 27 and os.path.isabs(z.data.train[0])  # 27 crops, anchored at the file
    assert z.targets == {"alpha": 8.0, "beta": 50.0}
    c = load_train(CONFIGS / "celegans_3label_cpv.yaml")
    assert c.model.architecture == "valid_unet3d" and c.model.representations == ["3label", "cpv"]
    with pytest.raises(BlocksegError, match="train"):
        load_train(CONFIGS / "demo.yaml")  # a run config with nothing to train
    with pytest.raises(BlocksegError, match="a run config .*blockseg.load_train_config"):
        load_training_config(CONFIGS / "nucmm_z.yaml")  # the training schema alone: the run door is named


def test_bad_train_section_names_the_key():
    raw = minimal(train={"data": {"train": ["a.zarr"]}, "model": {"representations": ["B"]}, "output": "o", "iterations": "many"})
    with pytest.raises(BlocksegError, match="train") as e:
        parse_config(raw)
    assert "iterations" in str(e.value)
