import json

import numpy as np

from turbonerf.cli.main import main
from turbonerf.io.media import save_png


def _images(folder, seed, n=2, size=48):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        save_png(folder / f"v{i}.png", rng.random((size, size, 3)).astype(np.float32))
    return folder


def test_metrics_compares_folders_by_name_and_prints_json(tmp_path, capsys):
    a, b = _images(tmp_path / "a", 0), _images(tmp_path / "b", 1)
    assert main(["metrics", str(a), str(b), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_images"] == 2 and [r["name"] for r in res["per_image"]] == ["v0.png", "v1.png"]
    assert {"psnr", "ssim", "lpips_alex", "lpips_vgg", "lpips"} <= set(res["mean"])
    assert res["mean"]["psnr"] < 15  # unrelated noise images
    assert main(["metrics", str(a), str(a), "--json", "--no-lpips-vgg"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["mean"]["psnr"] == float("inf") and same["mean"]["ssim"] == 1.0 and same["mean"]["lpips_vgg"] is None
    if same["mean"]["lpips_alex"] is not None:  # weights installed
        assert same["mean"]["lpips_alex"] < 1e-6


def test_metrics_names_the_missing_image(tmp_path, capsys):
    a, b = _images(tmp_path / "a", 0), _images(tmp_path / "b", 1, n=1)
    assert main(["metrics", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "v1.png" in err and "Traceback" not in err
