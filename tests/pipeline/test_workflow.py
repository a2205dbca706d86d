"""``blockseg run``: stages, skipping, resuming, provenance, NGFF outputs, CLI."""

import json
import os

import pytest
import yaml

from blockseg import BlocksegError
from blockseg.pipeline.config import parse_config
from blockseg.models import IdentityNet, save_checkpoint
from blockseg.pipeline.workflow import RunLayout, plan, run
from blockseg_cli.main import main


@pytest.fixture(scope="module")
def identity_ckpt(tmp_path_factory):
    """A parameter-free B, C, D 'network' (engine mechanics only, not accuracy)."""
    path = tmp_path_factory.mktemp("ckpt") / "identity.pt"
    save_checkpoint(path, IdentityNet(("B", "C", "D"), input_patch=(16, 32, 32)), normalisation={"offset": 120.0, "scale": -15.0})
    return str(path)


def config(run_dir, ckpt, **sections):
    raw = {
        "run_dir": str(run_dir),
        "data": {"synth": {"shape": [32, 64, 64], "seed": 3}, "chunks": [16, 32, 32]},
        "model": {"checkpoint": ckpt},
        "segment": {"params": {"min_size": 8, "min_seed_size": 4}},
        "evaluate": {"png": False},
    }
    raw.update(sections)
    return parse_config(raw)


@pytest.mark.slow  # whole runs on the shared LocalCluster
def test_run_skip_and_partial_redo(tmp_path, identity_ckpt, local_client):
    cfg = config(tmp_path / "r", identity_ckpt)
    first = run(cfg, client=local_client, log=lambda m: None)
    assert first.ran == ["data", "predict", "segment", "evaluate"]
    lay = first.layout
    for stage in first.ran:
        rec = json.load(open(lay.stage_record(stage)))
        assert rec["status"] == "done" and rec["seconds"] >= 0 and rec["peak_rss_total_gib"] > 0
    prov = json.load(open(os.path.join(lay.root, "run.json")))
    assert prov["config"]["run_dir"] == lay.root and prov["blockseg_version"]
    assert [h["stage"] for h in prov["history"]] == first.ran
    assert first.evaluation["n_true"] > 0  # the synthetic ground truth was found and scored

    again = run(cfg, client=local_client, log=lambda m: None)
    assert again.ran == []

    changed = config(tmp_path / "r", identity_ckpt, segment={"params": {"min_size": 16, "min_seed_size": 4}})
    assert plan(changed) == {"data": "skip", "predict": "skip", "segment": "run", "evaluate": "run"}
    redo = run(changed, client=local_client, log=lambda m: None)
    assert redo.ran == ["segment", "evaluate"]
    assert len(json.load(open(os.path.join(lay.root, "run.json")))["history"]) == 6

    # an interrupted stage (record says running, same fingerprint) resumes, later ones rerun
    rec = json.load(open(lay.stage_record("predict")))
    rec["status"] = "running"
    json.dump(rec, open(lay.stage_record("predict"), "w"))
    assert plan(changed) == {"data": "skip", "predict": "resume", "segment": "run", "evaluate": "run"}
    assert plan(changed, from_stage="segment")["predict"] == "resume"
    assert plan(changed, only="data") == {"data": "run", "predict": "skip", "segment": "skip", "evaluate": "skip"}


@pytest.mark.slow  # a whole run on the shared LocalCluster
def test_segment_tune_fits_thresholds_for_the_run_without_touching_the_store(tmp_path, identity_ckpt, local_client):
    from blockseg.segment.params import store_decoder

    first = run(config(tmp_path / "r", identity_ckpt, evaluate={"enabled": False}), client=local_client, log=lambda m: None)
    stored = store_decoder(first.layout.predictions)
    tune = {"labels": first.layout.ground_truth, "region": "0:16,:,:", "grid": {"seed_d": [0.1, 0.3], "fg_b": [0.5, 0.85]}}
    cfg = config(tmp_path / "r", identity_ckpt, evaluate={"enabled": False},
                 segment={"params": {"min_size": 8, "min_seed_size": 4}, "tune": tune})  # fmt: skip
    assert plan(cfg)["segment"] == "run" and plan(cfg)["predict"] == "skip"
    lines = []
    res = run(cfg, client=local_client, log=lines.append)
    out = res.stages["segment"]["result"]
    tuning = out["tuning"]
    assert tuning["region"] == [[0, 16], [0, 64], [0, 64]] and tuning["annotated_nuclei"] > 0
    assert tuning["scores"]["AP50"] >= tuning["before_scores"]["AP50"]
    # segment used the tuned values (segment.params still override their own keys), named as tuned
    used = out["decoder"]
    assert used["params"]["seed_d"] == tuning["params"]["seed_d"] and used["params"]["min_size"] == 8
    assert used["sources"]["seed_d"] == "segment.tune" and used["stored"]["from"] == "tuned"
    assert any("used for this run" in line for line in lines)
    assert store_decoder(first.layout.predictions) == stored  # the store keeps the checkpoint's


@pytest.mark.slow  # a whole run on the shared LocalCluster
def test_outputs_are_ngff_that_ome_zarr_reads(tmp_path, identity_ckpt, local_client):
    ome_zarr = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    cfg = config(tmp_path / "r", identity_ckpt, evaluate={"enabled": False})
    res = run(cfg, client=local_client, log=lambda m: None)
    assert "evaluate" not in res.ran
    nodes = list(ome_zarr.Reader(parse_url(res.layout.image))())
    labels = {n.metadata.get("name"): n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)}
    assert {"nuclei", "blockseg"} <= set(labels)
    seg = labels["blockseg"]
    assert seg.data[0].shape == (32, 64, 64)
    assert seg.metadata["coordinateTransformations"][0][0]["scale"] == [0.48, 0.51, 0.51]


def test_run_dir_safety(tmp_path, identity_ckpt):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    cfg = config(foreign, identity_ckpt)
    with pytest.raises(BlocksegError, match="not a blockseg run directory"):
        run(cfg, log=lambda m: None)
    assert sorted(os.listdir(foreign)) == ["precious.txt"]
    with pytest.raises(BlocksegError, match="checkpoint"):
        run(config(tmp_path / "x", str(tmp_path / "missing.pt")), log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_layout_for_external_image(tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path / "r"), "data": {"image": str(tmp_path / "img.zarr")}})
    lay = RunLayout.of(cfg)
    assert lay.image == str(tmp_path / "img.zarr")  # used in place, never written
    assert lay.labels == str(tmp_path / "r" / "segmentation.zarr")
    cfg = parse_config({"run_dir": str(tmp_path / "r"), "data": {"image": "a.npz", "ground_truth": "a.npz"}})
    lay = RunLayout.of(cfg)
    assert lay.image.endswith("r/image.zarr") and lay.labels.endswith("image.zarr/labels/blockseg")
    assert lay.ground_truth.endswith("r/ground_truth.zarr")


def test_cli_dry_run_and_errors(tmp_path, identity_ckpt, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"run_dir": "runs/a", "data": {"synth": {"shape": [16, 32, 32]}}, "model": {"checkpoint": identity_ckpt}}))
    assert main(["run", str(cfg_file), "--dry-run", "--set", "segment.halo=8"]) == 0
    out = capsys.readouterr().out
    assert "predict" in out and "run" in out
    assert main(["run", str(cfg_file), "--set", "segment.hallo=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "segment.hallo: unknown key" in err
    assert main(["run", str(cfg_file), "--set", "predict.batch_size=many"]) == 2
    assert "predict.batch_size" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _shipped_checkpoint():
    from blockseg.models import demo_checkpoint_path

    try:
        return demo_checkpoint_path()
    except BlocksegError as e:  # pragma: no cover - the checkpoint ships with the package
        pytest.fail(str(e))


@pytest.mark.slow  # a whole run of the shipped network on the shared LocalCluster
def test_end_to_end_with_shipped_checkpoint(tmp_path, local_client):
    """blockseg run on a held-out synthetic volume: the shipped model must segment it well."""
    cfg = parse_config(
        {
            "run_dir": str(tmp_path / "e2e"),
            "data": {"synth": {"preset": "nucmm-z", "shape": [48, 128, 128], "mode": "em", "seed": 11}},
            "model": {"checkpoint": "demo"},
            "evaluate": {"png": True},
        }
    )
    res = run(cfg, client=local_client, log=lambda m: None)
    ev = res.evaluation
    assert ev["n_true"] > 50
    assert ev["AP50"] >= 0.7, ev  # measured 0.9+ on the 128x512x512 demo volume; small crops have more cut nuclei
    assert os.path.exists(os.path.join(res.layout.evaluation, "overview.png"))
    rec = json.load(open(res.layout.stage_record("segment")))
    assert rec["result"]["decoder"]["name"] == "bcd"


@pytest.mark.slow  # whole runs on real crops on the shared LocalCluster
@pytest.mark.parametrize("name, n_instances", [("bbbc050_qcanet_8cell", 8), ("gonuclear_1135_mini", 54)])
def test_real_volumes_through_the_pipeline(real_data, tmp_path, local_client, name, n_instances):
    """The real crops run end to end (import from npz, predict, segment, evaluate)."""
    src = str(real_data / f"{name}.npz")
    cfg = parse_config(
        {
            "run_dir": str(tmp_path / name),
            "data": {"image": src, "image_key": "image", "ground_truth": src, "ground_truth_key": "labels"},
            "model": {"checkpoint": "demo"},
            "evaluate": {"png": False},
        }
    )
    res = run(cfg, client=local_client, log=lambda m: None)
    ev = res.evaluation
    assert ev["n_true"] == n_instances  # the imported ground truth is the file's
    assert 0.0 <= ev["avAP"] <= 1.0
    from blockseg.io.volume import open_volume

    img = open_volume(res.layout.image)
    assert tuple(img.voxel_size) == tuple(float(v) for v in __import__("numpy").load(src)["voxel_size_zyx"])
    assert open_volume(res.layout.labels).shape == img.shape


@pytest.mark.slow  # two whole runs on the shared LocalCluster
def test_same_config_twice_gives_identical_outputs(tmp_path, local_client):
    """Determinism on CPU: two runs of one config (shipped network) write identical bytes."""
    import hashlib

    import zarr

    def digests(root):
        out = {}
        for name in ("predictions.zarr", "image.zarr/labels/blockseg"):
            group = zarr.open_group(os.path.join(root, name), mode="r")
            for path, arr in sorted(group.arrays()):
                out[f"{name}/{path}"] = hashlib.sha256(arr[:].tobytes()).hexdigest()
            for sub, g in sorted(group.groups()):
                for path, arr in sorted(g.arrays()):
                    out[f"{name}/{sub}/{path}"] = hashlib.sha256(arr[:].tobytes()).hexdigest()
        return out

    runs = []
    for name in ("a", "b"):
        cfg = parse_config(
            {
                "run_dir": str(tmp_path / name),
                "data": {"synth": {"shape": [32, 96, 96], "seed": 5}, "chunks": [16, 48, 48]},
                "predict": {"block_shape": [16, 48, 48], "channels": "all"},
                "segment": {"block_shape": [16, 48, 48]},
                "evaluate": {"png": False},
            }
        )
        res = run(cfg, client=local_client, log=lambda m: None)
        runs.append((digests(res.layout.root), res.evaluation))
    (d1, e1), (d2, e2) = runs
    assert len(d1) >= 7 and d1 == d2
    assert e1["matching"] == e2["matching"] and e1["n_pred"] == e2["n_pred"] > 0
