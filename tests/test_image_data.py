"""ImageFolder reading/writing with clear errors, and the Procgen-16-games builder."""

import json

import numpy as np
import pytest

from driftless.image.data import (GAMES, build_procgen_games, list_image_folder, read_image_folder,
                                  write_image_folder)


def _png(path, color, size=(80, 60)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = color
    img[:, : size[0] // 2 - 30] = 0  # a dark strip the centre crop removes
    Image.fromarray(img).save(path)


def test_read_image_folder_layout_crop_and_classes(tmp_path):
    _png(tmp_path / "b_blue" / "1.png", (0, 0, 255))
    _png(tmp_path / "b_blue" / "sub" / "2.jpg", (0, 0, 255))
    _png(tmp_path / "a_red" / "1.png", (255, 0, 0))
    (tmp_path / "a_red" / "notes.txt").write_text("not an image")
    ds = read_image_folder(tmp_path, size=16, progress=False)
    assert ds.classes == ["a_red", "b_blue"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.images[0, :, :, 0].min() > 200  # the centre square is all red: the dark strip was cropped
    assert abs(int(ds.images[1, 8, 8, 2]) - 255) < 12  # jpeg
    assert read_image_folder(tmp_path, size=16, max_per_class=1, progress=False).labels.tolist() == [0, 1]
    # the class order of a trained model is kept, and unknown folders are refused
    again = read_image_folder(tmp_path, size=16, classes=["b_blue", "a_red", "c"], progress=False)
    assert again.labels.tolist() == [1, 0, 0] and again.classes == ["b_blue", "a_red", "c"]
    with pytest.raises(ValueError, match="does not know"):
        read_image_folder(tmp_path, size=16, classes=["a_red"], progress=False)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        list_image_folder(tmp_path / "missing")
    _png(tmp_path / "flat" / "x.png", (1, 2, 3))
    with pytest.raises(ValueError, match="class sub-folder"):
        list_image_folder(tmp_path / "flat")
    (tmp_path / "tree" / "empty").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        list_image_folder(tmp_path / "tree")
    bad = tmp_path / "broken" / "c" / "x.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image_folder(tmp_path / "broken", size=8, progress=False)


def test_write_image_folder_roundtrip(tmp_path, rng):
    imgs = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    write_image_folder(tmp_path, imgs, [0, 1, 0, 1, 1], ["x", "y"])
    ds = read_image_folder(tmp_path, size=8, progress=False)
    assert ds.per_class() == {"x": 2, "y": 3}
    np.testing.assert_array_equal(ds.images[:2], imgs[[0, 2]])
    with pytest.raises(ValueError, match="uint8"):
        write_image_folder(tmp_path, imgs.astype(np.float32), [0] * 5, ["x"])


@pytest.mark.slow
def test_procgen_games_builder(tmp_path):
    pytest.importorskip("procgen")
    games = ["coinrun", "maze"]
    kw = dict(per_game=6, stride=3, envs=4, games=games, progress=False)
    s = build_procgen_games(tmp_path / "a", **kw)
    assert s["written"] == 12 and len(GAMES) == 16
    ds = read_image_folder(tmp_path / "a", size=64, progress=False)
    assert ds.classes == games and ds.per_class() == {"coinrun": 6, "maze": 6}
    assert len({im.tobytes() for im in ds.images}) == 12  # distinct frames
    assert (ds.images[ds.labels == 0].mean() != ds.images[ds.labels == 1].mean())
    build_procgen_games(tmp_path / "b", **kw)
    np.testing.assert_array_equal(ds.images, read_image_folder(tmp_path / "b", size=64, progress=False).images)
    assert build_procgen_games(tmp_path / "a", **kw)["skipped"] == games  # resumable
    assert json.loads((tmp_path / "a" / "games.json").read_text())["counts"] == {"coinrun": 6, "maze": 6}
    with pytest.raises(ValueError, match="settings"):
        build_procgen_games(tmp_path / "a", **{**kw, "stride": 5})
    with pytest.raises(ValueError, match="unknown Procgen game"):
        build_procgen_games(tmp_path / "c", per_game=1, games=["pong"])
    # the same builder through the command line, resuming the finished folder
    from driftless.cli import main

    assert main(["data", "procgen-games", "--out", str(tmp_path / "a"), "--per-game", "6", "--stride", "3",
                 "--envs", "4", "--games", "coinrun,maze", "--quiet"]) == 0
    assert json.loads((tmp_path / "a" / "games.json").read_text())["counts"] == {"coinrun": 6, "maze": 6}
