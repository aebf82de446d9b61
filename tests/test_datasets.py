"""The training data folders: what is found, what is refused, and how it is said."""
import numpy as np
import pytest
from PIL import Image as PILImage

from sdflow.data.datasets import UnpairedPatches, list_images


def save(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(a).save(path)


def test_linked_data_set_and_16_bit_gray_are_used(tmp_path):
    rng = np.random.default_rng(0)
    save(tmp_path / "store" / "g16.png", (rng.integers(1000, 60000, (40, 40))).astype(np.uint16))
    save(tmp_path / "lr" / "a.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "div2k").symlink_to(tmp_path / "store")
    assert [p.name for p in list_images(tmp_path / "hr")] == ["g16.png"]
    data = UnpairedPatches(tmp_path / "hr", tmp_path / "lr", hr_patch=32, lr_patch=8)
    hr = data._load(data.hr_paths, 0, 32, np.random.default_rng(1), "HR")
    assert 10 < hr.mean() < 245 and hr.std() > 20   # not the white of Pillow's RGB conversion


def test_empty_and_unusable_folders_say_which(tmp_path, caplog):
    save(tmp_path / "lr" / "a.png", np.zeros((12, 12, 3), np.uint8))
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"hr: no HR image files \(.png"):
        UnpairedPatches(tmp_path / "hr", tmp_path / "lr", hr_patch=32, lr_patch=8)
    save(tmp_path / "hr" / "small.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="none of its 1 HR image file"):
        UnpairedPatches(tmp_path / "hr", tmp_path / "lr", hr_patch=32, lr_patch=8)
    assert "small.png: 20x20 is smaller than the 32px patch" in caplog.text
