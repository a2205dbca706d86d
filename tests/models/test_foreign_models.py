"""Foreign networks (blockseg.models.foreign): a TorchScript or ONNX U-Net built here, with a
sidecar, runs blockwise on 2 workers and equals an in-memory whole-volume run on the same
lattice; the sidecar's gaps are refused in one line; ``margin: auto`` measures the receptive
field; ``blockseg info`` says what the engine will use and where each item came from."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from blockseg import BlocksegError
from blockseg.io.volume import create_volume
from blockseg.models import is_foreign, load_checkpoint, read_checkpoint
from blockseg.models.foreign import describe, measure_margin
from blockseg.predict import predict, predict_array
from blockseg.io.predictions import encode_channel

from _helpers import stored_channels

#: one torch thread for the module's tiny networks (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE, BLOCK, CHUNKS = (32, 48, 40), (16, 16, 24), (8, 8, 8)
SIDECAR = {"outputs": ["B", "C", "D"], "patch": [16, 16, 16], "margin": "auto",
           "normalisation": {"percentile": [1, 99.8]}}  # fmt: skip


class PlainUNet(nn.Module):
    """A two-level 3-D U-Net in plain torch (the fallback where MONAI is not installed)."""

    def __init__(self, out_channels: int = 3, width: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.ReLU())
        self.down = nn.MaxPool3d(2)
        self.mid = nn.Sequential(nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv3d(2 * width, width, 3, padding=1), nn.ReLU(), nn.Conv3d(width, out_channels, 1))

    def forward(self, x):
        e = self.enc(x)
        return self.dec(torch.cat([e, self.up(self.mid(self.down(e)))], dim=1))


def unet(out_channels: int = 3) -> nn.Module:
    """MONAI's BasicUNet (tiny, batch norm so the receptive field is local) if MONAI is installed,
    else :class:`PlainUNet`; eval mode."""
    try:
        from monai.networks.nets import BasicUNet
    except ImportError:
        return PlainUNet(out_channels).eval()
    torch.manual_seed(0)
    return BasicUNet(spatial_dims=3, in_channels=1, out_channels=out_channels, features=(4, 4, 8, 8, 8, 4),
                     norm=("batch", {"affine": True}), dropout=0.0).eval()  # fmt: skip


def volume(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.random(SHAPE) * 180 + 20).astype(np.uint16)
    vol = create_volume(tmp_path / "img.zarr", SHAPE, np.uint16, chunks=CHUNKS)
    vol.array[...] = image
    return vol, image


def write_sidecar(path, **changes):
    spec = {**SIDECAR, **changes}
    spec = {k: v for k, v in spec.items() if v is not None}
    path.write_text(yaml.safe_dump(spec))
    return path


def torchscript(tmp_path, net=None, name="net", **changes):
    net = unet() if net is None else net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16)).save(str(tmp_path / f"{name}.pt"))
    write_sidecar(tmp_path / f"{name}.yaml", **changes)
    return tmp_path / f"{name}.pt"


def onnx_export(tmp_path, net=None, name="net", dynamic=True, **changes):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # torch's exporter needs it
    net = unet() if net is None else net
    axes = {0: "n", 2: "z", 3: "y", 4: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 1, 16, 16, 16), str(tmp_path / f"{name}.onnx"), dynamo=False,
                          input_names=["image"], output_names=["maps"],
                          dynamic_axes={"image": axes, "maps": axes} if dynamic else None)  # fmt: skip
    write_sidecar(tmp_path / f"{name}.yaml", **changes)
    return tmp_path / f"{name}.onnx"


def assert_equals_predict_array(tmp_path, model_path, image, report):
    """The store equals a whole-volume in-memory run of the same network on the same lattice,
    within one storage step, in >99 % of voxels exactly."""
    model, payload = load_checkpoint(model_path)
    ref = predict_array(model, image, payload["metadata"]["normalisation"], patch=report.plan.lattice.patch,
                        snap=report.plan.lattice_snap)  # fmt: skip
    got = stored_channels(report.output)
    assert set(got) == {"B", "C", "D"}
    for c in got:
        want = encode_channel(ref[c], model.kinds[c], np.uint8).astype(int)
        assert np.abs(got[c].astype(int) - want).max() <= 1, c
        assert (got[c] == want).mean() > 0.99, c


# ---------------------------------------------------------------------------- blockwise == whole volume
@pytest.mark.slow  # ~20 s on 2 loaded cores: three predicts (run, resume, refused resume)
def test_torchscript_unet_runs_blockwise_on_two_workers_as_whole_volume(tmp_path, local_client):
    vol, image = volume(tmp_path)
    path = torchscript(tmp_path)
    assert is_foreign(path) and not is_foreign(tmp_path / "img.zarr")
    rep = predict(vol.path, path, tmp_path / "o.zarr", block_shape=BLOCK, client=local_client, progress=False)
    assert rep.blocks == 2 * 3 * 2 and rep.patches == rep.plan.patches_whole_volume
    assert "torchscript" in rep.plan.model and "[measured" in rep.plan.model
    assert "decoder bcd" in rep.plan.store_note or "bcd" in rep.plan.store_note  # its channels imply bcd
    assert_equals_predict_array(tmp_path, path, image, rep)
    # a rerun resumes the finished store: nothing computed
    again = predict(vol.path, path, tmp_path / "o.zarr", block_shape=BLOCK, client=local_client, progress=False)
    assert again.computed == 0 and again.skipped == rep.blocks
    # another sidecar (here: another margin) is another run: refused, not mixed into the store
    write_sidecar(tmp_path / "net.yaml", margin=[2, 2, 2])
    with pytest.raises(BlocksegError, match="other settings"):
        predict(vol.path, path, tmp_path / "o.zarr", block_shape=BLOCK, progress=False)


@pytest.mark.slow  # the shared LocalCluster
def test_onnx_export_runs_blockwise_on_two_workers_as_whole_volume(tmp_path, local_client):
    vol, image = volume(tmp_path, seed=1)
    path = onnx_export(tmp_path)
    rep = predict(vol.path, path, tmp_path / "o.zarr", block_shape=BLOCK, client=local_client, progress=False)
    assert rep.plan.model.startswith("onnx ")
    assert_equals_predict_array(tmp_path, path, image, rep)
    # the ONNX graph computes what the torch network does (same weights, whole patch)
    net = unet()
    x = torch.rand(2, 1, 16, 32, 16)
    model, _ = load_checkpoint(path)
    np.testing.assert_allclose(model(x).numpy(), net(x).detach().numpy(), atol=1e-4)


@pytest.mark.slow  # exports and runs an ONNX network
def test_onnx_with_a_fixed_input_shape_runs_that_patch_only(tmp_path):
    vol, image = volume(tmp_path, seed=2)
    path = onnx_export(tmp_path, dynamic=False, patch=None)  # the patch comes from the graph
    d = describe(path)
    assert d.input_patch == (16, 16, 16) and d.sources["patch"] == "model" and d.fixed_patch
    rep = predict(vol.path, path, tmp_path / "o.zarr", block_shape=BLOCK, progress=False)
    assert rep.plan.lattice.patch == (16, 16, 16) and "fixed input shape" in rep.plan.patch_choice.reason
    assert_equals_predict_array(tmp_path, path, image, rep)
    with pytest.raises(BlocksegError, match="fixed at"):
        predict(vol.path, path, tmp_path / "o2.zarr", block_shape=BLOCK, patch=32, dry_run=True, progress=False)


# ---------------------------------------------------------------------------- the sidecar
def test_outputs_in_any_order_with_ignored_and_applied_channels(tmp_path):
    class Maps(nn.Module):  # channel k is the input times k + 1: which one lands where is visible
        def forward(self, x):
            return torch.cat([x * (k + 1) for k in range(6)], dim=1)

    path = torchscript(tmp_path, Maps(), outputs=["ignore", "C", "cpv_y", "cpv_x", "B", "cpv_z"], activation="applied",
                       margin=0, normalisation="none")  # fmt: skip
    model, payload = load_checkpoint(path)
    assert model.channels == ("C", "cpv_z", "cpv_y", "cpv_x", "B")
    assert payload["representations"] == ["C", "cpv", "B"] and payload["metadata"]["normalisation"] is None
    x = torch.rand(1, 1, 16, 16, 16)
    y = model.postprocess(model(x))  # "applied": no sigmoid on B / C
    for i, k in enumerate((2, 6, 3, 4, 5)):
        assert torch.equal(y[0, i], x[0, 0] * k)
    # logits (the default): B and C get their sigmoid, cpv stays raw
    write_sidecar(tmp_path / "net.yaml", outputs=["ignore", "C", "cpv_y", "cpv_x", "B", "cpv_z"], margin=0)
    y = load_checkpoint(path)[0].postprocess(model(x))
    assert torch.allclose(y[0, 0], torch.sigmoid(x[0, 0] * 2)) and torch.equal(y[0, 1], x[0, 0] * 6)


@pytest.mark.parametrize(
    "changes,message",
    [({"outputs": None}, "add 'outputs"),
     ({"margin": None}, "margin: auto"),
     ({"normalisation": None}, "add 'normalisation"),
     ({"patch": None}, "add 'patch"),
     ({"outputs": ["B", "C"]}, "returns 3 channels"),
     ({"outputs": ["B", "cpv_z", "cpv_y"]}, "not \\['cpv_x'\\]"),
     ({"outputs": ["B", "C", "halo"]}, "not a channel blockseg knows"),
     ({"patch": [16, 16, 13]}, "fails on"),
     ({"patch": [16, 16, 12], "divisor": 8}, "not a multiple of divisor"),
     ({"margin": "big"}, "margin must be"),
     ({"colour": "red"}, "unknown sidecar key")],
)  # fmt: skip
def test_a_sidecar_missing_what_the_engine_needs_is_refused_in_one_line(tmp_path, changes, message):
    path = torchscript(tmp_path, **changes)
    with pytest.raises(BlocksegError, match=message) as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value)


def test_a_network_without_a_sidecar_is_refused_naming_the_file_to_add(tmp_path):
    path = torchscript(tmp_path)
    (tmp_path / "net.yaml").unlink()
    with pytest.raises(BlocksegError, match="needs a sidecar net.yaml"):
        read_checkpoint(path)


def test_onnx_without_onnxruntime_says_how_to_install_it(tmp_path, monkeypatch):
    path = onnx_export(tmp_path, name="noort")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(BlocksegError, match=r"blockseg\[onnx\]"):
        read_checkpoint(path)


def test_margin_auto_measures_the_receptive_radius():
    # receptive radius per axis: z 1 + 0 + 1 = 2, y 1 + 2 + 0 = 3, x 1 + 2 + 0 = 3
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ELU(),
                        nn.Conv3d(2, 2, (1, 3, 3), padding=(0, 2, 2), dilation=(1, 2, 2)), nn.ELU(),
                        nn.Conv3d(2, 1, (3, 1, 1), padding=(1, 0, 0))).eval()  # fmt: skip
    margin, note = measure_margin(net, (16, 24, 24), (0, 0, 0), (0, 0, 0), (1, 1, 1))
    assert margin == (2, 3, 3) and "receptive radius 2x3x3" in note
    # a valid-padding network loses the radius at its border: the crop maps outputs to inputs
    valid = nn.Sequential(nn.Conv3d(1, 1, 5), nn.ELU(), nn.Conv3d(1, 1, 3)).eval()
    assert measure_margin(valid, (16, 16, 16), (3, 3, 3), (0, 0, 0), (1, 1, 1))[0] == (3, 3, 3)
    # a global response (instance normalisation) is capped at half the output patch, and said so
    inst = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.InstanceNorm3d(2), nn.Conv3d(2, 1, 1)).eval()
    margin, note = measure_margin(inst, (8, 16, 16), (0, 0, 0), (0, 0, 0), (1, 1, 1))
    assert margin == (4, 8, 8) and "reaches the patch border" in note and "capped" in note


# ---------------------------------------------------------------------------- the CLI
def blockseg(capsys, *args):
    """Run the CLI in this process: ``(exit code, stdout, stderr)``."""
    from blockseg_cli.main import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_info_says_what_the_engine_will_use_and_where_it_came_from(tmp_path, capsys):
    path = torchscript(tmp_path, voxel_size=[1.0, 0.5, 0.5], decoder={"name": "bcd"})
    rc, out, err = blockseg(capsys, "info", path)
    assert rc == 0, err
    assert "output channels: 0: B, 1: C, 2: D [sidecar]" in out
    assert "margin" in out and "[measured: impulse response" in out
    assert "patch 16x16x16 [sidecar]" in out and "voxel size: 1x0.5x0.5 µm [sidecar]" in out
    assert "percentile" in out and "TorchScript is a program" in out and "decoder: bcd" in out
    rc, out, _ = blockseg(capsys, "info", tmp_path / "net.yaml", "--json")  # the sidecar names the model too
    s = json.loads(out)
    assert s["kind"] == "model" and s["sources"]["margin"] == "measured" and s["channels"] == ["B", "C", "D"]


def test_predict_cli_prints_the_model_line_and_refuses_a_bad_sidecar_in_one_line(tmp_path, capsys):
    vol, _ = volume(tmp_path)
    path = torchscript(tmp_path)
    rc, out, err = blockseg(capsys, "predict", vol.path, path, tmp_path / "o.zarr", "--block", *BLOCK, "--dry-run")
    assert rc == 0, err
    assert "model: torchscript" in out and "measured" in out
    write_sidecar(tmp_path / "net.yaml", margin=None)
    rc, out, err = blockseg(capsys, "predict", vol.path, path, tmp_path / "o.zarr", "--block", *BLOCK)
    assert rc == 2 and err.strip().count("\n") == 0 and "margin: auto" in err
    assert not (tmp_path / "o.zarr").exists()
    write_sidecar(tmp_path / "net.yaml")
    rc, _, err = blockseg(capsys, "predict", vol.path, path, tmp_path / "o.zarr", "--runtime", "compile", "--dry-run")
    assert rc == 2 and "runtime" in err


# ---------------------------------------------------------------------------- bioimage.io packages
@pytest.mark.slow  # ~40 s on 2 loaded cores: the demo network runs twice over the volume
def test_export_model_of_a_shipped_checkpoint_validates_and_predicts_as_the_checkpoint(tmp_path, local_client):
    pytest.importorskip("bioimageio.spec")
    from bioimageio.spec import load_model_description

    from blockseg.models.bioimageio_export import _blobs, export_package

    rep = export_package("demo", tmp_path / "demo.zip")
    assert rep["status"] in ("valid-format", "passed")
    descr = load_model_description(str(tmp_path / "demo.zip"), format_version="latest")
    assert descr.validation_summary.status == rep["status"]
    assert [str(c) for c in descr.outputs[0].axes[1].channel_names] == ["B", "C", "D", "cpv_z", "cpv_y", "cpv_x"]
    assert any(p.id == "scale_range" for p in descr.inputs[0].preprocessing)
    assert descr.config.model_extra["blockseg"]["margin"] == [6, 16, 16]  # the exact sidecar travels with it
    shape = (24, 48, 40)
    image = _blobs(shape, seed=3).astype(np.uint16)
    vol = create_volume(tmp_path / "img.zarr", shape, np.uint16, chunks=CHUNKS)
    vol.array[...] = image
    kw = dict(block_shape=BLOCK, client=local_client, progress=False, scale=1, channels="all")
    native = predict(vol.path, "demo", tmp_path / "native.zarr", **kw)
    package = predict(vol.path, tmp_path / "demo.zip", tmp_path / "package.zarr", **kw)
    assert package.plan.lattice.patch == native.plan.lattice.patch and package.blocks > 1
    a, b = stored_channels(native.output), stored_channels(package.output)
    assert set(a) == set(b) == {"B", "C", "D", "cpv_z", "cpv_y", "cpv_x"}
    for c in a:  # the same network on the same lattice: within one storage step
        assert np.abs(a[c].astype(np.float64) - b[c].astype(np.float64)).max() <= (1 if a[c].dtype == np.uint8 else 1e-2), c
    with pytest.raises(BlocksegError, match="already exists"):
        export_package("demo", tmp_path / "demo.zip")


class FinalUNet(nn.Module):
    """The plain U-Net with its activations inside (sigmoid B, C; tanh D), as many zoo models are."""

    def __init__(self):
        super().__init__()
        self.net = PlainUNet(3)

    def forward(self, x):
        y = self.net(x)
        return torch.cat([torch.sigmoid(y[:, :2]), torch.tanh(y[:, 2:])], dim=1)


def zoo_package(tmp_path) -> str:
    """A bioimage.io package written with bioimageio.spec's own classes around a plain torch U-Net."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as m

    d = tmp_path / "zoo"
    d.mkdir()
    net = FinalUNet().eval()
    x = np.random.default_rng(0).random((1, 1, 16, 32, 32)).astype(np.float32) * 1000
    lo, hi = np.percentile(x, [1, 99.8])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.zeros(1, 1, 16, 32, 32)).save(str(d / "weights.pt"))
        y = net(torch.from_numpy(((x - lo) / (hi - lo + 1e-6)).astype(np.float32))).numpy()
    np.save(d / "in.npy", x)
    np.save(d / "out.npy", y)
    (d / "README.md").write_text("# zoo U-Net\n\n# Validation\n\nnone\n")
    import matplotlib.pyplot as plt

    plt.imsave(d / "cover.png", x[0, 0, 8], cmap="gray")
    space = [m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=s, step=2), scale=v, unit="nanometer")
             for a, s, v in zip("zyx", (8, 16, 16), (400.0, 200.0, 200.0))]  # fmt: skip
    inp = m.InputTensorDescr(
        id=m.TensorId("raw"), axes=[m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier("raw")]), *space],
        test_tensor=m.FileDescr(source=d / "in.npy"),
        preprocessing=[m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(axes=[m.AxisId(a) for a in "zyx"], min_percentile=1.0,
                                                                  max_percentile=99.8))],
    )  # fmt: skip
    out_axes = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier(c) for c in ("foreground", "contour", "distance")])]
    out_axes += [m.SpaceOutputAxis(id=m.AxisId(a), size=m.SizeReference(tensor_id=m.TensorId("raw"), axis_id=m.AxisId(a)),
                                   scale=v, unit="nanometer") for a, v in zip("zyx", (400.0, 200.0, 200.0))]  # fmt: skip
    out = m.OutputTensorDescr(id=m.TensorId("bcd"), axes=out_axes, test_tensor=m.FileDescr(source=d / "out.npy"))
    descr = m.ModelDescr(
        name="zoo unet", description="a plain torch U-Net", authors=[m.Author(name="test")],
        cite=[m.CiteEntry(text="3D U-Net", url="https://arxiv.org/abs/1606.06650")], license="CC-BY-4.0",
        documentation=m.FileDescr(source=d / "README.md"), covers=[m.FileDescr(source=d / "cover.png")],
        inputs=[inp], outputs=[out],
        weights=m.WeightsDescr(torchscript=m.TorchscriptWeightsDescr(source=d / "weights.pt", pytorch_version=m.Version("2.0"))),
    )  # fmt: skip
    return str(save_bioimageio_package(descr, output_path=tmp_path / "zoo.zip"))


@pytest.mark.slow  # the shared LocalCluster
def test_a_zoo_package_runs_blockwise_on_two_workers_as_whole_volume(tmp_path, local_client):
    pytest.importorskip("bioimageio.spec")
    path = zoo_package(tmp_path)
    d = describe(path)
    assert d.outputs == ("B", "C", "D") and d.sources["outputs"] == "package" and d.package
    assert d.input_patch == (16, 32, 32) and d.divisor == (2, 2, 2) and d.sources["margin"] == "measured"
    assert d.voxel_size == pytest.approx((0.4, 0.2, 0.2))  # nanometres -> µm
    assert d.normalisation == {"scheme": "percentile", "low": 1.0, "high": 99.8}
    assert set(d.activation.values()) == {"applied"}  # no postprocessing: the outputs are final
    vol, image = volume(tmp_path, seed=4)
    rep = predict(vol.path, path, tmp_path / "o.zarr", block_shape=BLOCK, client=local_client, progress=False, scale=1)
    assert rep.blocks > 1 and "[measured" in rep.plan.model
    assert_equals_predict_array(tmp_path, path, image, rep)
    # a sidecar beside the package overrides what the package says
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({"margin": [2, 3, 3]}))
    d = describe(path)
    assert d.margin == (2, 3, 3) and d.sources["margin"] == "sidecar"


@pytest.mark.slow  # exports models through the CLI
def test_export_model_cli_refuses_in_one_line(tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    path = torchscript(tmp_path)
    rc, _, err = blockseg(capsys, "export-model", path, tmp_path / "x.zip")
    assert rc == 2 and "takes a blockseg checkpoint" in err and err.strip().count("\n") == 0
    rc, _, err = blockseg(capsys, "export-model", "demo", tmp_path / "x.tar")
    assert rc == 2 and ".zip" in err


def test_a_package_whose_channel_names_blockseg_does_not_know_asks_for_a_sidecar(tmp_path):
    pytest.importorskip("bioimageio.spec")
    import zipfile

    path = zoo_package(tmp_path)
    with zipfile.ZipFile(path) as z:  # the same package with the zoo's usual anonymous channel names
        files = {n: z.read(n) for n in z.namelist()}
    for k, name in enumerate((b"foreground", b"contour", b"distance")):
        files["rdf.yaml"] = files["rdf.yaml"].replace(b"- " + name, b"- channel%d" % k)
    anon = tmp_path / "anon.zip"
    with zipfile.ZipFile(anon, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    with pytest.raises(BlocksegError, match="put 'outputs: \\[...\\]' in anon.yaml beside the package") as e:
        read_checkpoint(anon)
    assert "\n" not in str(e.value)
    (tmp_path / "anon.yaml").write_text(yaml.safe_dump({"outputs": ["B", "C", "D"]}))
    assert read_checkpoint(anon)["representations"] == ["B", "C", "D"]
