"""`snakemake --report` after the smoke run: Snakemake's HTML report with every figure (PNG and PDF,
embedded), its caption, the tables, and the workflow description with the configuration used."""

from __future__ import annotations

import base64
import html
import json
import re

import pytest

from stirflow.config import figure_names, load_config
from stirflow.plots import FIGURES

from conftest import REPO, SMOKE_CONFIG, snakemake

pytestmark = pytest.mark.slow  # needs the smoke run


def _script_var(page: str, element_id: str, name: str):
    """The JSON value assigned to ``var <name>`` in the report's ``<script id=...>`` element."""
    m = re.search(rf'<script id="{element_id}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert m, f"no {element_id} in the report"
    return json.loads(m.group(1))


def _plain(fragment: str) -> str:
    """Text of an HTML fragment, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _caption_heading(name: str) -> str:
    """The first line of report/<name>.rst (its bold title), as plain text."""
    first = (REPO / "report" / f"{name}.rst").read_text().splitlines()[0]
    return " ".join(first.replace("*", "").split())


@pytest.fixture(scope="module")
def report(smoke_run, tmp_path_factory):
    """The HTML report of a copy of the smoke run, and the run's directory."""
    import shutil

    work = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(smoke_run, work, symlinks=True)
    path = work / "results" / "report.html"
    proc = snakemake(work, "--report", str(path))
    assert "Report created" in proc.stdout + proc.stderr
    return path.read_text(encoding="utf-8"), work


def test_report_has_every_figure_with_its_caption(report):
    page, work = report
    results = _script_var(page, "results", "results")
    config = load_config(SMOKE_CONFIG)
    formats = config["figures"]["formats"]
    assert set(formats) == {"png", "pdf"}  # the schema's default
    names = figure_names(config)  # the figures of the axes smoke does not vary are not drawn
    assert set(FIGURES) - set(names) == {"axis_train_fraction", "axis_schedule", "axis_architectures"}
    for name in names:
        for ext in formats:
            key = f"results/figures/{name}.{ext}"
            assert key in results, f"{key} missing from the report"
            entry = results[key]
            # embedded: the data URI holds the figure file itself
            mime = "image/png" if ext == "png" else "application/pdf"
            prefix = f"data:{mime};charset=utf8;filename={name}.{ext};base64,"
            uri = entry["data_uri"]
            assert uri.startswith(f"data:{mime}"), uri[:80]
            data = base64.b64decode(uri.split("base64,", 1)[1])
            assert data == (work / key).read_bytes(), f"{key}: embedded data differ from the file"
            assert prefix.split(";")[0] in uri
            # the caption, rendered from report/<name>.rst: its heading, its explanation, no raw template
            caption = _plain(entry["caption"])
            assert _caption_heading(name) in caption, (name, caption[:200])
            assert "How to read it" in caption, name
            assert "{{" not in caption and "snakemake.config" not in caption, name
            assert len(caption) > 400, name
            assert entry["labels"]["format"] == ext.upper()


def test_report_captions_use_the_config(report):
    page, _ = report
    results = _script_var(page, "results", "results")
    config = load_config(SMOKE_CONFIG)
    caption = _plain(results["results/figures/spread_vs_robustness.png"]["caption"])
    assert f"({', '.join(map(str, config['analysis']['first_epochs']))})" in caption
    assert f"({config['analysis']['bootstrap']} resamples" in caption
    caption = _plain(results["results/figures/robustness_per_corruption.png"]["caption"])
    assert ", ".join(config["robustness"]["corruptions"]) in caption


def test_report_has_the_tables(report):
    page, work = report
    results = _script_var(page, "results", "results")
    for table in ("correlations", "checkpoints"):
        entry = results[f"results/tables/{table}.csv"]
        data = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        assert data == (work / "results" / "tables" / f"{table}.csv").read_bytes()
        assert _caption_heading(table) in _plain(entry["caption"])
    categories = _script_var(page, "categories", "categories")
    assert {"Figures", "Tables"} <= set(categories)


def test_report_describes_the_workflow_and_shows_the_config(report):
    page, _ = report
    desc = _plain(_script_var(page, "workflow-desc", "workflow_desc"))
    assert "what happens to a vision transformer" in desc
    assert "Configuration used" in desc
    # the resolved config, defaults included: the smoke config's values and a key it leaves to the schema
    config = load_config(SMOKE_CONFIG)
    m = re.search(r"Configuration used.*?(\{.*\})", desc, re.S)
    assert m, desc[-500:]
    shown = json.loads(m.group(1))
    assert shown["stir"]["steps"] == config["stir"]["steps"]
    assert shown["figures"]["formats"] == ["png", "pdf"]
    assert shown == json.loads(json.dumps(config))
