"""Paired evaluation of super-resolution (SR) and downscaling (DS), with bicubic baselines: the
engine of `sdflow eval`, of `sdflow demo` and (its scorer) of training validation.

    from sdflow import evaluation
    result = evaluation.evaluate_folders("test/HR", "test/LR", "out", model=pipeline, taus=[0, 0.4, 0.8])
    # or, in steps:
    matching = evaluation.match_folders("test/HR", "test/LR")
    result = evaluation.run_evaluation(matching.pairs, pipeline, taus=[0, 0.8], samples=3)
    paths = evaluation.write_outputs(result, "out")       # CSV, JSON, Markdown, report.html

Modules, in the order they import each other: `results` (columns, rows, means, formatting),
`pairs` (matching folders, the bundled sample photos), `lpips`, `report` (the HTML page),
`tables` (text, CSV, JSON, Markdown), `scoring` (quantising and scoring outputs, running a
`sdflow.pipeline.Pipeline` over the pairs).

Scoring rules, chosen so the numbers are those of the files `sdflow sr` / `sdflow ds` would write:
* every output (model or bicubic) is clamped and rounded to its source's bit depth, and made
  gray (Rec. 601 luma) for a gray source, before it is scored (the LR is SR's source, the HR
  DS's), as `sdflow sr/ds` write it (`scoring.quantised`); the reference images are taken as stored;
* sample k of every image is drawn with seed `seed + k`, as `sdflow sr/ds --seed` draw it, through
  the same pipeline (so large images are tiled as there, at its precision);
* SR against the HR: PSNR and SSIM on BT.601 luma (Y) and on RGB, with a 4-pixel border dropped
  (the SR literature's convention for x4); LR consistency: PSNR of the SR output shrunk by the
  bicubic x4 of `sdflow.resize` against the LR it came from, 1 LR pixel of border dropped (the
  same 4 HR pixels); LPIPS on the whole image, only with a user-supplied weights file;
* DS against the real LR: PSNR and SSIM on RGB over the whole image, and the noise level
  (`metrics.noise_sigma`), sharpness (`metrics.laplacian_variance`) and mean gradient magnitude
  of generated vs real LR, with the per-image absolute gap; all three on the 8-bit scale
  (levels, levels^2 for the variance) so they read like pixel values;
* with several samples a row holds the mean over samples, and `diversity` is the mean per-pixel
  standard deviation across them (8-bit levels); for SR also `diversity_tex`, the same over the
  image's most detailed quarter (`metrics.texture_mask` of the HR), and `best_gain` /
  `worst_gain`, the best / worst sample's PSNR-Y minus the tau-0 output's (best-of-N as the NTIRE
  2021 SR-space challenge scored it; tau 0 is sampled for it when not among the taus); the
  report adds a map of the spread to its crops;
* every tau and sample of an image shares the image's condition (`Pipeline.prepare`), so
  `seconds` is per output with that shared work spread over them;
* a mean row averages the per-image rows (a PSNR of inf, i.e. identical images, makes it inf).

HR and LR must agree in size: LR = ceil(HR / 4) on both sides (sdflow's convention, LR pixel i
covering HR pixels 4i..4i+3, the last one partial; `sdflow degrade` writes HR in multiples of 4),
or LR = floor(HR / 4), in which case the HR is cropped to 4 x LR (BasicSR's mod-crop) and a note
says so. A pair that cannot be read or does not fit is skipped with its reason, and
`EvalResult.ok` turns False.
"""
from sdflow.evaluation.lpips import LPIPS, load_lpips
from sdflow.evaluation.pairs import Matching, Pair, match_folders, sample_pairs
from sdflow.evaluation.results import (DIRECTIONS, DS_COLUMNS, SR_BORDER, SR_COLUMNS, Column, EvalResult, Panel,
                                       Visual, format_value, mean_rows)
from sdflow.evaluation.scoring import (as_pipeline, colour_shift, ds_scores, evaluate_folders, pick_crop, quantised,
                                       run_evaluation, sr_scores)
from sdflow.evaluation.tables import format_table, summary_text, write_outputs

__all__ = ["LPIPS", "load_lpips", "Matching", "Pair", "match_folders", "sample_pairs", "DIRECTIONS", "DS_COLUMNS",
           "SR_BORDER", "SR_COLUMNS", "Column", "EvalResult", "Panel", "Visual", "format_value", "mean_rows",
           "as_pipeline", "colour_shift", "ds_scores", "evaluate_folders", "pick_crop", "quantised", "run_evaluation",
           "sr_scores", "format_table", "summary_text", "write_outputs"]
