"""`sdflow eval` and sdflow.evaluation (its scorer and report): tiny random model, images made here."""
import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import sdflow
from sdflow import evaluation, metrics
from sdflow.evaluation import report
from sdflow.evaluation.pairs import PairError, fit_pair
from sdflow.cli import main
from sdflow.imageio import quantize, read_image, to_tensor
from sdflow.resize import downscale, upscale


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a shared 2-core machine torch's worker threads slow tiny tensors down, not up.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth(h, w, seed):
    """uint8 RGB with structure at several scales, so SSIM and the crop picker have work."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.full((h, w, 3), 0.5)
    for c in range(3):
        for _ in range(5):
            fy, fx = rng.uniform(0.5, 9, 2)
            img[:, :, c] += 0.08 * np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 6))
    return quantize(np.clip(img, 0, 1))


def make_pairs(root, names=("a", "b"), hw=(64, 48)):
    """HR/<name>.png and LR/<name>.png: LR a noisy area-downscale of HR, as a camera might give."""
    for i, name in enumerate(names):
        hr = smooth(*hw, seed=i)
        t = torch.from_numpy(hr / 255.0).permute(2, 0, 1)[None]
        lr = downscale(t, 4, "area")[0].permute(1, 2, 0).numpy()
        lr = lr + np.random.default_rng(10 + i).normal(0, 0.02, lr.shape)
        for side, img in (("HR", hr), ("LR", quantize(np.clip(lr, 0, 1)))):
            (root / side).mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(img).save(root / side / f"{name}.png")
    return root / "HR", root / "LR"


def run(*args):
    return main([str(a) for a in args])


class ImgSources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.external = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def md_table(text, heading):
    """Rows (lists of cells) of the first Markdown table after the line starting with `heading`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[0], rows[2:]   # header, body (the rule line dropped)


# ----- the CLI end to end -------------------------------------------------------------------------

def test_eval_writes_consistent_files(tmp_path, tiny_model_path, capsys):
    hr_dir, lr_dir = make_pairs(tmp_path)
    out = tmp_path / "out"
    assert run("eval", "-q", "--hr", hr_dir, "--lr", lr_dir, "-o", out, "--model", tiny_model_path,
               "--tau", "0", "0.8", "--samples", "2", "--crop-size", "32") == 0
    printed = capsys.readouterr().out
    for name in ("sr_per_image.csv", "sr_mean.csv", "ds_per_image.csv", "ds_mean.csv",
                 "results.json", "results.md", "report.html"):
        assert (out / name).is_file(), name

    doc = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    page = (out / "report.html").read_text()
    for d, first_metric in (("sr", "psnr_y"), ("ds", "psnr_rgb")):
        per = read_csv(out / f"{d}_per_image.csv")
        mean = read_csv(out / f"{d}_mean.csv")
        methods = ["bicubic", "sdflow", "sdflow"] if d == "sr" else ["real LR", "bicubic", "sdflow", "sdflow"]
        assert [r["method"] for r in mean] == methods
        assert len(per) == 2 * len(methods)
        assert doc[d]["per_image"] == json.loads(json.dumps(doc[d]["per_image"]))  # strict JSON
        assert len(doc[d]["per_image"]) == len(per)
        # The mean rows are the means of the per-image rows, and the files agree on them.
        header, body = md_table(md, "## Super" if d == "sr" else "## Down")
        for row, jrow, mdrow in zip(mean, doc[d]["mean"], body):
            mine = [float(r[first_metric]) for r in per
                    if r["method"] == row["method"] and r["tau"] == row["tau"] and r[first_metric]]
            if row["method"] == "real LR":
                assert row[first_metric] == "" and jrow[first_metric] is None
                continue
            assert float(row[first_metric]) == pytest.approx(np.mean(mine), rel=1e-12)
            assert jrow[first_metric] == pytest.approx(float(row[first_metric]), rel=1e-12)
            col = header.index("PSNR-Y ↑" if d == "sr" else "PSNR-RGB ↑")
            assert mdrow[col] == f"{float(row[first_metric]):.2f}"
            assert f"{float(row[first_metric]):.2f}" in page
            assert f"{float(row[first_metric]):.2f}" in printed
        if d == "sr":
            assert float(mean[1]["lr_psnr"]) > 0 and float(mean[0]["ssim_y"]) <= 1

    # Diversity: none for one bicubic output, 0 at tau 0 (the mode), > 0 at tau 0.8.
    sr = {(r["method"], r["tau"]): r for r in read_csv(out / "sr_mean.csv")}
    assert sr[("bicubic", "")]["diversity"] == ""
    assert float(sr[("sdflow", "0.0")]["diversity"]) == 0.0
    assert float(sr[("sdflow", "0.8")]["diversity"]) > 0.5
    ds = {(r["method"], r["tau"]): r for r in read_csv(out / "ds_mean.csv")}
    assert float(ds[("sdflow", "0.8")]["diversity"]) > 0

    # The report links only files beside it, all present, and nothing on the network.
    parser = ImgSources()
    parser.feed(page)
    assert parser.srcs and not parser.external
    for src in parser.srcs:
        assert not src.startswith(("/", "file:")) and (out / unquote(src)).is_file(), src
    assert "<svg" in page and "PSNR against the sampling temperature" in page


def test_bicubic_rows_equal_direct_computation(tmp_path, capsys):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("x",), hw=(56, 60))
    out = tmp_path / "out"
    assert run("eval", "-q", "--hr", hr_dir, "--lr", lr_dir, "-o", out, "--model", "none") == 0
    assert "SDFlow" not in capsys.readouterr().out
    assert "only the bicubic baselines" in (out / "results.md").read_text()

    hr = np.asarray(PILImage.open(hr_dir / "x.png"))
    lr = np.asarray(PILImage.open(lr_dir / "x.png"))
    up = quantize(((upscale(to_tensor(lr / 255.0), 4)[0] + 1) / 2).permute(1, 2, 0).numpy())
    sr = read_csv(out / "sr_per_image.csv")
    assert [r["method"] for r in sr] == ["bicubic"]
    assert float(sr[0]["psnr_y"]) == pytest.approx(metrics.psnr_y(up, hr, 4), abs=1e-9)
    assert float(sr[0]["ssim_y"]) == pytest.approx(metrics.ssim_y(up, hr, 4), abs=1e-9)
    assert float(sr[0]["psnr_rgb"]) == pytest.approx(metrics.psnr(up, hr, 4), abs=1e-9)
    assert float(sr[0]["ssim_rgb"]) == pytest.approx(metrics.ssim(up, hr, 4), abs=1e-9)
    back = downscale(torch.from_numpy(up / 255.0).permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0)
    assert float(sr[0]["lr_psnr"]) == pytest.approx(
        metrics.psnr(np.clip(back.numpy(), 0, 1), lr, 1), abs=1e-5)

    down = quantize(((downscale(to_tensor(hr / 255.0), 4)[0] + 1) / 2).permute(1, 2, 0).numpy())
    ds = {r["method"]: r for r in read_csv(out / "ds_per_image.csv")}
    assert float(ds["bicubic"]["psnr_rgb"]) == pytest.approx(metrics.psnr(down, lr), abs=1e-9)
    assert float(ds["bicubic"]["ssim_rgb"]) == pytest.approx(metrics.ssim(down, lr), abs=1e-9)
    assert float(ds["real LR"]["noise"]) == pytest.approx(255 * metrics.noise_sigma(lr), abs=1e-9)
    assert float(ds["bicubic"]["noise_gap"]) == pytest.approx(
        abs(255 * metrics.noise_sigma(down) - 255 * metrics.noise_sigma(lr)), abs=1e-9)
    assert float(ds["bicubic"]["lapvar"]) == pytest.approx(
        255 ** 2 * metrics.laplacian_variance(down), rel=1e-9)
    assert float(ds["bicubic"]["grad"]) == pytest.approx(
        255 * metrics.mean_gradient_magnitude(down), rel=1e-9)
    assert "sdflow" not in {r["method"] for r in read_csv(out / "sr_mean.csv")}


def test_unmatched_and_unreadable_are_reported(tmp_path, capsys):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a", "b", "c"))
    (lr_dir / "c.png").unlink()
    PILImage.fromarray(smooth(16, 16, 5)).save(lr_dir / "only_lr.png")
    (lr_dir / "b.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert run("eval", "-q", "--hr", hr_dir, "--lr", lr_dir, "-o", out, "--model", "none") == 1
    err = capsys.readouterr().err
    assert "c.png" in err and "only_lr.png" in err
    assert re.search(r"skipped b: cannot read the LR image .*b\.png", err)
    doc = json.loads((out / "results.json").read_text())
    assert doc["unmatched_hr"] == ["c.png"] and doc["unmatched_lr"] == ["only_lr.png"]
    assert [s["image"] for s in doc["skipped"]] == ["b"]
    assert {r["image"] for r in doc["sr"]["per_image"]} == {"a"}
    page = (out / "report.html").read_text()
    assert "only_lr.png" in page and "c.png" in page and "cannot read" in page


def test_size_mismatch_is_skipped(tmp_path):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a", "b"))
    PILImage.fromarray(smooth(20, 20, 3)).save(lr_dir / "b.png")
    res = evaluation.evaluate_folders(hr_dir, lr_dir, progress=False, log=lambda m: None)
    assert not res.ok
    assert res.skipped[0][0] == "b" and "sizes do not match" in res.skipped[0][1]
    assert {r["image"] for r in res.sr_rows} == {"a"}


def test_hr_not_a_multiple_of_4_ceil_grid_and_mod_crop(tmp_path):
    """LR = ceil(HR / 4) on the x4 grid, or LR = floor(HR / 4) with the HR mod-cropped: both are
    scored on the same 4i..4i+3 grid, so a 161x121 pair scores like its 160x120 crop away from the
    partial last pixel, and bicubic DS of the HR is the LR it was made from (on that grid)."""
    hr = smooth(121, 161, 0)
    t = torch.from_numpy(hr / 255.0).permute(2, 0, 1)[None].double()
    lr_ceil = quantize(downscale(t, 4)[0].permute(1, 2, 0).numpy().clip(0, 1))      # 31 x 41
    for name, lr in (("ceil", lr_ceil), ("floor", lr_ceil[:30, :40])):
        for side, img in (("HR", hr), ("LR", lr)):
            (tmp_path / name / side).mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(img).save(tmp_path / name / side / "a.png")
    results = {name: evaluation.evaluate_folders(tmp_path / name / "HR", tmp_path / name / "LR", progress=False,
                                               log=lambda m: None)
               for name in ("ceil", "floor")}
    for name, res in results.items():
        assert res.ok, res.skipped
        bic = next(r for r in res.ds_rows if r["method"] == "bicubic")
        assert bic["psnr_rgb"] > 50, (name, bic)   # the LR is HR's bicubic: a stretched grid gives ~28 dB
    assert not any("cropped" in n for n in results["ceil"].notes)
    assert any("1 HR image(s) cropped to 4x their LR" in n for n in results["floor"].notes)
    with pytest.raises(PairError, match="expected LR 41x31, or 40x30"):
        fit_pair(hr, lr_ceil[:29])


def test_div2k_and_realsr_names_pair(tmp_path):
    for side, names in (("HR", ["0801.png", "0802.png", "Canon_001_HR.png", "x.png"]),
                        ("LR", ["0801x4.png", "0802x4m.png", "Canon_001_LR4.png", "y.png"])):
        for n in names:
            (tmp_path / side).mkdir(exist_ok=True)
            PILImage.fromarray(smooth(8, 8, 0)).save(tmp_path / side / n)
    m = evaluation.match_folders(tmp_path / "HR", tmp_path / "LR")
    assert [(p.name, Path(p.lr).name) for p in m.pairs] == [
        ("0801", "0801x4.png"), ("0802", "0802x4m.png"), ("Canon_001_HR", "Canon_001_LR4.png")]
    assert m.unmatched_hr == ["x.png"] and m.unmatched_lr == ["y.png"]


def test_a_rerun_into_the_same_folder_leaves_no_stale_table_and_skips_its_report(tmp_path):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a",))
    out = hr_dir / "eval"   # inside the input: the report's PNGs must not become test images
    assert run("eval", "-q", "--hr", hr_dir, "--lr", lr_dir, "-o", out, "--model", "none") == 0
    assert (out / "ds_mean.csv").is_file() and any((out / "report_files").iterdir())
    assert run("eval", "-q", "--hr", hr_dir, "--lr", lr_dir, "-o", out, "--model", "none",
               "--direction", "sr") == 0
    assert not (out / "ds_mean.csv").exists() and (out / "sr_mean.csv").is_file()


def test_an_output_folder_that_holds_the_inputs_excludes_nothing(tmp_path, monkeypatch):
    """`sdflow eval --hr HR --lr LR -o .`: the output folder holds the inputs, not the reverse."""
    make_pairs(tmp_path, names=("a",))
    monkeypatch.chdir(tmp_path)
    assert run("eval", "-q", "--hr", "HR", "--lr", "LR", "-o", ".", "--model", "none") == 0
    assert read_csv(tmp_path / "sr_mean.csv")[0]["images"] == "1"


def test_an_image_too_small_for_ssim_does_not_blank_the_means(tmp_path):
    make_pairs(tmp_path, names=("a",))
    make_pairs(tmp_path / "small", names=("b",), hw=(16, 16))
    for side in ("HR", "LR"):
        (tmp_path / "small" / side / "b.png").rename(tmp_path / side / "b.png")
    res = evaluation.evaluate_folders(tmp_path / "HR", tmp_path / "LR", progress=False, log=lambda m: None)
    assert res.ok
    rows = {r["image"]: r for r in res.sr_rows if r["method"] == "bicubic"}
    assert math.isnan(rows["b"]["ssim_y"]) and 0 < rows["a"]["ssim_y"] < 1
    mean = next(r for r in res.sr_mean if r["method"] == "bicubic")
    assert mean["images"] == 2 and mean["ssim_y"] == pytest.approx(rows["a"]["ssim_y"])
    assert mean["psnr_y"] == pytest.approx((rows["a"]["psnr_y"] + rows["b"]["psnr_y"]) / 2)
    assert any(n.startswith("SR SSIM-Y: not defined for 1 image(s)") and "(b)" in n for n in res.notes)


def test_grayscale_pairs_are_scored_on_the_gray_files_sdflow_writes(tmp_path, tiny_model_path):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("g",))
    for side in (hr_dir, lr_dir):
        with PILImage.open(side / "g.png") as im:
            im.convert("L").save(side / "g.png")
    res = evaluation.evaluate_folders(hr_dir, lr_dir, model=sdflow.load(tiny_model_path), taus=[0.8],
                                    seed=3, direction="both", progress=False, log=lambda m: None)
    for direction, src, truth in (("sr", lr_dir, hr_dir), ("ds", hr_dir, lr_dir)):
        assert run(direction, "-i", src / "g.png", "-o", tmp_path / direction, "--tau", "0.8", "--seed", "3",
                   "--model", tiny_model_path) == 0
        written, reference = read_image(tmp_path / direction / f"g_{direction}.png"), read_image(truth / "g.png")
        assert written.grayscale
        row = next(r for r in getattr(res, f"{direction}_rows") if r["method"] == "sdflow")
        border = evaluation.SR_BORDER if direction == "sr" else 0
        assert row["psnr_rgb"] == pytest.approx(
            metrics.psnr(quantize(written.rgb), quantize(reference.rgb), crop_border=border), abs=1e-9)


def test_no_pairs_and_bad_folders_are_usage_errors(tmp_path, capsys):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a",))
    (lr_dir / "a.png").rename(lr_dir / "z.png")
    assert run("eval", "-q", "--hr", hr_dir, "--lr", lr_dir, "-o", tmp_path / "o") == 2
    assert run("eval", "-q", "--hr", tmp_path / "nope", "--lr", lr_dir, "-o", tmp_path / "o") == 2
    assert "no image in" in capsys.readouterr().err


# ----- the engine ---------------------------------------------------------------------------------

def test_identical_sr_gives_inf_and_ssim_one(tmp_path, tiny_model_path):
    """A model that returns the ground truth: PSNR inf and SSIM 1 must pass through every output."""
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a",))
    gt = to_tensor(read_image(hr_dir / "a.png").rgb)
    model = sdflow.load(tiny_model_path)
    model.super_resolve = lambda lr, tau=0.8, generator=None, **kw: gt.clone()
    pairs = evaluation.match_folders(hr_dir, lr_dir).pairs
    res = evaluation.run_evaluation(pairs, model, taus=[0.0, 0.5], direction="sr", progress=False,
                                  crop_size=32, log=lambda m: None)
    rows = [r for r in res.sr_mean if r["method"] == "sdflow"]
    assert all(r["psnr_y"] == math.inf and r["psnr_rgb"] == math.inf for r in rows)
    assert all(r["ssim_y"] == 1.0 and r["ssim_rgb"] == 1.0 for r in rows)
    assert "inf" in evaluation.summary_text(res)
    paths = evaluation.write_outputs(res, tmp_path / "out")
    doc = json.loads(paths["results.json"].read_text())   # strict JSON: no bare Infinity
    assert doc["sr"]["mean"][1]["psnr_y"] == "inf"
    assert read_csv(paths["sr_mean.csv"])[1]["psnr_y"] == "inf"
    assert "| inf |" in paths["results.md"].read_text()
    page = paths["report.html"].read_text()
    assert "infinite points not drawn" in page and ">inf<" in page


def test_model_failure_skips_the_pair_only(tmp_path, tiny_model_path):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a", "b"))
    model = sdflow.load(tiny_model_path)
    real = model.downscale

    def flaky(hr, *args, **kwargs):
        if hr.shape[-1] == 48 and not getattr(flaky, "done", False):
            flaky.done = True
            raise RuntimeError("out of memory (simulated)")
        return real(hr, *args, **kwargs)

    model.downscale = flaky
    messages = []
    res = evaluation.run_evaluation(evaluation.match_folders(hr_dir, lr_dir).pairs, model, taus=[0.0],
                                  progress=False, log=messages.append)
    assert res.skipped == [("a", "DS at tau 0 failed (RuntimeError: out of memory (simulated))")]
    assert any(m.startswith("skipped a: DS at tau 0 failed") for m in messages)
    # Rows of a skipped pair are all dropped, so every mean is over the same images.
    assert {r["image"] for r in res.sr_rows + res.ds_rows} == {"b"}
    assert not res.ok


def test_lpips_column_only_with_weights(tmp_path):
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a", "b"), hw=(128, 128))
    pairs = evaluation.match_folders(hr_dir, lr_dir).pairs
    messages = []
    res = evaluation.run_evaluation(pairs, None, progress=False, log=messages.append, report_images=0)
    assert len([m for m in messages if "LPIPS" in m]) == 1
    assert "lpips" not in [c.key for c in res.columns("sr")]
    paths = evaluation.write_outputs(res, tmp_path / "out")
    assert "lpips" not in json.loads(paths["results.json"].read_text())["sr"]["columns"]
    assert "LPIPS" not in md_table(paths["results.md"].read_text(), "## Super")[0]

    # A state dict in the lpips package's layout (random weights: the check is the wiring).
    torch.manual_seed(0)
    net = evaluation.LPIPS("alex")
    state = {}
    for k, v in net.state_dict().items():
        if k.startswith("features."):
            idx = int(k.split(".")[1])
            sl = next(i for i, tap in enumerate(net.taps, 1) if idx <= tap)
            state[f"net.slice{sl}.{k[len('features.'):]}"] = v
        else:
            state[f"lin{k.split('.')[1]}.model.1.weight"] = v.abs()
    torch.save(state, tmp_path / "lpips.pth")
    loaded = evaluation.load_lpips(tmp_path / "lpips.pth")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert loaded(x, x).item() == 0.0
    assert loaded(x, -x).item() > 0
    messages.clear()
    res = evaluation.run_evaluation(pairs, None, lpips=tmp_path / "lpips.pth", progress=False,
                                  log=messages.append, report_images=0)
    assert not [m for m in messages if "LPIPS" in m]
    assert "lpips" in [c.key for c in res.columns("sr")]
    assert all(r["lpips"] > 0 for r in res.sr_rows)

    del state["lin4.model.1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="lins.4.weight"):
        evaluation.load_lpips(tmp_path / "broken.pth")


def test_match_folders_by_relative_stem(tmp_path):
    for side, names in (("HR", ["s/a.png", "b.png", "d.png", "d.jpg"]), ("LR", ["s/a.jpg", "b.png", "d.png", "e.png"])):
        for n in names:
            (tmp_path / side / n).parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(smooth(8, 8, 0)).save(tmp_path / side / n)
    m = evaluation.match_folders(tmp_path / "HR", tmp_path / "LR")
    assert [p.name for p in m.pairs] == ["b", "s/a"]
    assert m.unmatched_lr == ["e.png"] and m.unmatched_hr == []
    # d is ambiguous in HR, so neither HR file nor LR's d.png is used, and all three are listed.
    assert [Path(d).relative_to(tmp_path).as_posix() for d in m.duplicates] == [
        "HR/d.jpg", "HR/d.png", "LR/d.png"]


def test_sample_pairs_match_sdflow_degrade(tmp_path):
    from sdflow.data.degrade import sample_images

    pairs = evaluation.sample_pairs()
    assert [p.name for p in pairs] == [p.stem for p in sample_images()]
    first = sample_images()[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / first.name).write_bytes(first.read_bytes())
    assert run("degrade", "-i", tmp_path / "in", "-o", tmp_path / "d") == 0
    lr = np.asarray(PILImage.open(tmp_path / "d" / "LR" / f"{first.stem}.png"))
    assert np.array_equal(quantize(pairs[0].lr.rgb), lr)


def test_plot_and_ticks():
    assert report.nice_ticks(11.3, 27.9) == [10, 15, 20, 25, 30]
    assert report.nice_ticks(0, 0.8) == [0, 0.2, 0.4, 0.6, 0.8]
    svg = report.svg_plot([("m", [(0, 20.0), (0.5, 21.0), (1.0, math.inf)])], [("bic", 25.0)],
                          title="t")
    assert svg.count("<circle") == 2 and "1 infinite point not drawn" in svg
    assert 'stroke-dasharray="6 4"' in svg
    # An infinite reference (bicubic identical to the truth on every image) is said, not dropped quietly.
    svg = report.svg_plot([("m", [(0, 20.0)])], [("bic", math.inf)], title="t")
    assert 'stroke-dasharray="6 4"' not in svg and "the bic line (infinite) not drawn" in svg
    # A crop at whole zooms of its LR pixels, near the target size.
    assert report.display_size(128) % 32 == 0 and report.display_size(96) % 24 == 0


def test_every_tau_and_sample_of_an_image_shares_its_condition(tmp_path, tiny_model_path, monkeypatch):
    """The condition does not depend on tau: eval makes it once per image and direction, and the
    scores are those of separate calls."""
    from sdflow.model import SDFlow

    hr_dir, lr_dir = make_pairs(tmp_path, names=("a", "b"))
    pairs = evaluation.match_folders(hr_dir, lr_dir).pairs
    model = sdflow.load(tiny_model_path)
    made = []
    for maker in ("sr_condition", "ds_condition"):
        real = getattr(SDFlow, maker)
        monkeypatch.setattr(SDFlow, maker, lambda self, x, precision=None, real=real, maker=maker:
                            made.append(maker) or real(self, x, precision))

    def scores(res):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in res.sr_rows + res.ds_rows]

    kw = dict(taus=[0.0, 0.7], samples=2, progress=False, report_images=0, log=lambda m: None)
    shared = evaluation.run_evaluation(pairs, model, **kw)
    assert sorted(made) == ["ds_condition"] * 2 + ["sr_condition"] * 2  # 2 images, not 2 x 2 taus x 2 samples
    ours = [r for r in shared.sr_rows if r["method"] == "sdflow" and r["image"] == "a"]
    assert len(ours) == 2 and ours[0]["seconds"] == ours[1]["seconds"] > 0  # seconds per output, spread
    monkeypatch.setattr("sdflow.tiling.DEFAULT_CONDITIONS_BUDGET", 0)
    made.clear()
    separate = evaluation.run_evaluation(pairs, model, **kw)
    assert len(made) == 16
    assert scores(shared) == scores(separate)


def test_best_of_n_and_textured_diversity(tmp_path, tiny_model_path):
    """best_gain / worst_gain are the best / worst sample's PSNR-Y minus tau 0's, whether or not tau 0 is among the
    taus; the textured spread is over a part of the image; the report shows a spread map."""
    hr_dir, lr_dir = make_pairs(tmp_path, names=("a",), hw=(96, 96))
    pairs = evaluation.match_folders(hr_dir, lr_dir).pairs
    model = sdflow.load(tiny_model_path)
    kw = dict(samples=4, progress=False, log=lambda m: None, crop_size=32)
    both = evaluation.run_evaluation(pairs, model, taus=[0.0, 1.0], **kw)
    rows = {(r["method"], r["tau"]): r for r in both.sr_rows}
    mode, hot = rows[("sdflow", 0.0)], rows[("sdflow", 1.0)]
    assert mode["best_gain"] is None and rows[("bicubic", None)]["diversity_tex"] is None
    assert hot["diversity"] > 0 and hot["diversity_tex"] > 0
    # The best of four is at least their mean: best_gain >= mean PSNR-Y - tau 0's.
    # The best of four is at least their mean, the worst at most: best >= mean - tau 0's >= worst.
    assert hot["best_gain"] >= hot["psnr_y"] - mode["psnr_y"] - 1e-9 >= hot["worst_gain"] - 2e-9
    assert hot["best_gain"] > hot["worst_gain"]
    alone = evaluation.run_evaluation(pairs, model, taus=[1.0], **kw)
    assert alone.sr_rows[-1]["best_gain"] == pytest.approx(hot["best_gain"], abs=1e-9)
    assert alone.sr_rows[-1]["worst_gain"] == pytest.approx(hot["worst_gain"], abs=1e-9)
    assert all("_psnr_y_range" not in r for r in both.sr_rows + alone.sr_rows)
    panels = [p for p in both.visuals[0].sr if p.label.startswith("spread")]
    assert [p.label for p in panels] == ["spread τ=1"] and panels[0].image.shape == (32, 32, 3)
    assert "diversity (textured)" in [c.title for c in both.columns("sr")]
    one = evaluation.run_evaluation(pairs, model, taus=[1.0], **{**kw, "samples": 1})
    assert "best_gain" not in {c.key for c in one.columns("sr")}


def test_colour_shift_is_the_largest_channel_mean_difference_in_levels():
    a = smooth(24, 32, 0)
    assert evaluation.colour_shift(a, a) == 0
    tinted = a.astype(np.int16)
    tinted[..., 2] += 3  # +3 levels of blue: invisible in PSNR-Y on texture, 3 here
    tinted[..., 0] -= 1
    assert evaluation.colour_shift(np.clip(tinted, 0, 255).astype(np.uint8), a) == pytest.approx(3, abs=0.05)
    gray = a[..., 0]
    assert evaluation.colour_shift(np.clip(gray.astype(int) + 2, 0, 255).astype(np.uint8), gray) == \
        pytest.approx(2, abs=0.05)
