"""`sdflow convert` and the model files it writes: clear errors, nothing half-written left behind,
ordinary file permissions, and the parameter count it reports."""
import os
import stat

import pytest
import torch

import sdflow
from sdflow.checkpoints import AUTHORS_FILES, describe, save_model
from sdflow.cli import main
from test_parity import FIXTURE, write_authors_folder


def convert(*args):
    return main(["convert", *[str(a) for a in args]])


@pytest.fixture
def umask_027():
    # 027 differs from the usual 022 and from safetensors' own 0600 (077), so the mode shows
    # which of them was applied.
    before = os.umask(0o027)
    yield
    os.umask(before)


def test_a_pth_that_is_not_a_state_dict_is_named(tmp_path, capsys):
    authors = tmp_path / "authors"
    authors.mkdir()
    for name in AUTHORS_FILES:
        torch.save({"w": torch.zeros(2)}, authors / name)
    torch.save(torch.zeros(3, 4), authors / "lrencoder.pth")
    assert convert(authors, "-o", tmp_path / "m.safetensors") == 2
    err = capsys.readouterr().err
    assert str(authors / "lrencoder.pth") in err and "single tensor of shape (3, 4)" in err
    torch.save({"w": torch.zeros(2), "epoch": 3}, authors / "lrencoder.pth")
    assert convert(authors, "-o", tmp_path / "m.safetensors") == 2
    assert "lrencoder.pth" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["authors"]


def test_an_unusable_output_path_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kw):
        raise AssertionError("the authors' folder was read")

    monkeypatch.setattr("sdflow.checkpoints.convert_authors", no_work)
    (tmp_path / "d.safetensors").mkdir()
    assert convert(tmp_path / "authors", "-o", tmp_path / "d.safetensors") == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    assert convert(tmp_path / "authors", "-o", tmp_path / "f" / "m.safetensors") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert convert(tmp_path / "authors", "-o", tmp_path / "m.pth") == 2
    assert sorted(os.listdir(tmp_path)) == ["d.safetensors", "f"]
    assert not any((tmp_path / "d.safetensors").iterdir())


def test_a_failed_write_leaves_no_file(tmp_path, tiny_model_path, monkeypatch):
    import safetensors.torch

    model = sdflow.load(tiny_model_path)

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_model(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_model_files_get_the_umasks_permissions(tmp_path, tiny_model_path, umask_027):
    path = save_model(sdflow.load(tiny_model_path), tmp_path / "m.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_describe_counts_parameters_not_buffers(tiny_model_path):
    model = sdflow.load(tiny_model_path)
    learned = sum(p.numel() for p in model.parameters())
    stored = sum(v.numel() for v in model.state_dict().values())
    assert stored > learned  # the state dict holds buffers too (permutations, signs, flags)
    assert describe(tiny_model_path)["parameters"] == learned


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"parity fixture not found at {FIXTURE}")
def test_convert_reports_the_parameter_count_and_writes_an_ordinary_file(tmp_path, capsys, umask_027):
    authors = write_authors_folder(torch.load(FIXTURE, weights_only=True), tmp_path)
    out = tmp_path / "out" / "authors.safetensors"
    assert convert(authors, "-o", out) == 0
    learned = sum(p.numel() for p in sdflow.load(out).parameters())
    assert learned == 14_099_319  # the paper's model
    assert f"({learned:,} parameters" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert os.listdir(out.parent) == ["authors.safetensors"]
