"""`report.html`: written at the end of a run, opened in headless Chromium and checked for its parts."""

import os
import re
import shutil
import subprocess

import pytest

PARTS = ("accuracy", "acceptance", "scores", "projection", "labels", "stages", "lineage")


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium (scripts/test.sh installs Debian's `chromium` where it can)")


def _render(path, tmp_path):
    """The DOM after Chromium loaded the page (its images decoded), and a screenshot."""
    browser = _chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
              "--virtual-time-budget=5000"]
    dom = subprocess.run(common + ["--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120)
    shot = tmp_path / "report.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1000,1600", f"file://{path}"],
                   capture_output=True, timeout=120)
    return dom.stdout, shot


def test_run_writes_a_report_that_a_browser_shows_with_every_part(make_config, run_dir, tmp_path, capsys):
    from peft_transfer.pipeline import run_transfer

    cfg = make_config(output_dir=str(run_dir), label_votes=3, label_temperature=0.5)
    report = run_transfer(cfg, show_progress=False)
    path = os.path.join(cfg.output_dir, "report.html")
    assert f"Report: {path}" in capsys.readouterr().out  # the printed table says where the page is
    dom, shot = _render(path, tmp_path)
    for part in PARTS:
        assert f'<section id="{part}">' in dom, part
    section = {p: dom.split(f'<section id="{p}">')[1].split("</section>")[0] for p in PARTS}
    assert not any('class="missing"' in section[p] for p in PARTS)  # this run has data for every part
    ev = report["evaluation"]
    for key in ("source_adapter", "target_base", "transferred"):
        assert f"{ev[key]:.1%}" in section["accuracy"]
    # Every figure decoded in the browser: the page's own check counts images with a natural width.
    figures = sum(section[p].count("<img") for p in PARTS)
    assert figures == 3 and re.search(rf'data-images-decoded="{figures}"', dom)
    assert shot.exists() and shot.stat().st_size > 10_000
    # No text of a real input reaches the page: only numbers are taken from the data.
    from peft_transfer.data import load_examples

    real = [e["input"] for e in load_examples(cfg.train_file) + load_examples(cfg.eval_file)]
    assert not [x for x in real if x in dom]


def test_report_of_a_partial_run_says_what_is_missing(make_config, run_dir, tmp_path):
    from peft_transfer import Transfer
    from peft_transfer.report_html import write_html_report

    transfer = Transfer(make_config(output_dir=str(run_dir), eval_file=None), show_progress=False)
    path = write_html_report(str(run_dir), transfer.report())  # owner stages only: nothing synthesized yet
    dom, _ = _render(path, tmp_path)
    for part in ("accuracy", "acceptance", "projection", "lineage"):
        assert 'class="missing"' in dom.split(f'<section id="{part}">')[1].split("</section>")[0], part


def test_the_accuracy_part_shows_lm_evals_table_of_the_three_models():
    from peft_transfer.report_html import _accuracy

    report = {"evaluation": {"source_adapter": 0.7, "target_base": 0.0, "transferred": 0.35, "num_samples": 20},
              "lm_eval": {"source_adapter": {"arc_easy": {"acc,none": 0.61, "acc_stderr,none": 0.02}},
                          "target_base": {"arc_easy": {"acc,none": 0.42}},
                          "transferred": {"arc_easy": {"acc,none": 0.55}}}}
    page = _accuracy(report)
    assert "<td>arc_easy</td><td>acc,none</td><td>0.6100</td><td>0.4200</td><td>0.5500</td>" in page
    assert "stderr" not in page and "<td>35.0%</td>" in page
    assert "lm-evaluation-harness" not in (_accuracy({"evaluation": report["evaluation"]}) or "")
    assert _accuracy({}) is None
