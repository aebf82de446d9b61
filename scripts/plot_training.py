"""Training curves of a run folder as two SVG images, from its train.log (no plotting library).

    python scripts/plot_training.py RUN OUT_PREFIX      # OUT_PREFIX_nll.svg, OUT_PREFIX_val.svg

nll: the likelihood terms (bits per dimension) as logged every `log.every` steps.
val: the validation metrics (SR Y-PSNR at tau 0, DS PSNR at `val.ds_tau`) beside their bicubic
baselines. Resumed runs log into the same file; a step logged twice keeps its last value.
"""
import re
import sys
from pathlib import Path

from sdflow.evaluation.report import svg_plot

STEP = re.compile(r"\bstep (\d+)/\d+ stage \d \| (.*?) \|")
VAL = re.compile(r"validation at step (\d+): (.*)$")
PAIR = re.compile(r"(\w+)=([-\d.eE+naif]+)")


def parse(log: str):
    """({step: {term: value}} of the loss lines, the same of the validation lines)."""
    terms, val = {}, {}
    for line in log.splitlines():
        for pattern, into in ((STEP, terms), (VAL, val)):
            m = pattern.search(line)
            if m:
                into[int(m.group(1))] = {k: float(v) for k, v in PAIR.findall(m.group(2))}
    return terms, val


def main(run: str, prefix: str) -> None:
    terms, val = parse((Path(run) / "train.log").read_text())
    series = lambda d, key: [(s, v[key]) for s, v in sorted(d.items()) if key in v]
    Path(f"{prefix}_nll.svg").write_text(svg_plot(
        [("NLL HR", series(terms, "nll_hr")), ("NLL LR", series(terms, "nll_lr"))],
        x_label="step", y_label="bits / dim", title="Likelihood terms (training batches)") + "\n")
    last = val[max(val)] if val else {}
    Path(f"{prefix}_val.svg").write_text(svg_plot(
        [("SR Y", series(val, "sr_psnr_y")), ("DS RGB", series(val, "ds_psnr"))],
        baselines=[("bicubic up", last.get("bicubic_up_psnr_y", float("nan"))),
                   ("bicubic down", last.get("bicubic_down_psnr", float("nan")))],
        x_label="step", y_label="PSNR (dB)", title="Validation (centre crops of the held-out photos)") + "\n")
    print(f"{len(terms)} logged steps, {len(val)} validations -> {prefix}_nll.svg, {prefix}_val.svg")


if __name__ == "__main__":
    main(*sys.argv[1:])
