"""What a researcher reads: Wilson intervals, compare.md's table, the plots and the self-contained
report.html of `hwsim compare SPEC` (built here from made-up rows: no training)."""
import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hwsim.compare import Row, Spec, html_report, plots, table, table_cells
from hwsim.stats import wilson_interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_wilson_interval_matches_the_formula_and_stays_in_0_1():
    low, high = wilson_interval(0.5, 100)                 # Wilson (1927): 0.5 +- 0.0962 at n = 100
    assert low == pytest.approx(0.40383, abs=1e-5) and high == pytest.approx(0.59617, abs=1e-5)
    assert wilson_interval(0.0, 50)[0] == 0.0 and 0 < wilson_interval(0.0, 50)[1] < 0.1
    assert wilson_interval(1.0, 50)[1] == 1.0 and 0.9 < wilson_interval(1.0, 50)[0] < 1
    wide, narrow = wilson_interval(0.9, 200), wilson_interval(0.9, 10_000)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    with pytest.raises(ValueError, match="n: expected"):
        wilson_interval(0.5, 0)


def _rows() -> tuple[list[dict], list[dict]]:
    """Summary lines and per-chip results of three rows: one exact, one with 3 chips (and a component
    under 0.1 %), one failed."""
    chips = [{"row": "chip", "chip": c, "deployed_accuracy": a, "finetuned_accuracy": a + 0.01}
             for c, a in enumerate((0.85, 0.87, 0.9))]
    lines = [{"row": "exact", "backend": "ideal", "chips": 1, "failed": 0, "inferences": 1000, "eval_batch": 1000,
              "deployed_accuracy": 0.91, "finetuned_accuracy": 0.92, "energy_j_per_inference": 6e-6,
              "latency_s_per_inference": 1e-5, "energy_breakdown_per_inference": {"compute": 1e-6, "memory": 5e-6}},
             {"row": "chip", "backend": "photonic", "chips": 3, "failed": 0, "inferences": 200, "eval_batch": 200,
              "deployed_accuracy": 0.873, "deployed_accuracy_std": 0.02, "deployed_accuracy_min": 0.85,
              "deployed_accuracy_max": 0.9, "finetuned_accuracy": 0.883, "finetuned_accuracy_std": 0.02,
              "finetuned_accuracy_min": 0.86, "finetuned_accuracy_max": 0.91, "energy_j_per_inference": 2e-6,
              "energy_j_calibration": 3e-3, "latency_s_per_inference": 1e-7,
              "energy_breakdown_per_inference": {"laser": 1.9e-6, "converters": 1e-10, "heaters": 1e-7}},
             {"row": "broken", "backend": "fixed", "chips": 1, "failed": 1, "error": "ConfigError: backend.bits"}]
    return lines, chips


def test_the_table_states_its_sample_intervals_batch_and_optional_columns():
    lines, _ = _rows()
    md = table(lines)
    assert "| test images |" in md and "| eval. batch |" in md
    assert "| exact | 1 | 1,000 | 91.00 [89.1, 92.6] | 92.00 [90.2, 93.5] |" in md
    assert "87.30 [82.0, 91.2]; chips ± 2.00 (85.0-90.0)" in md           # Wilson at n = 200, then the chips
    assert "| calibration J |" in md and "0.003" in md
    assert "calibration J" not in table([line for line in lines if line["row"] != "chip"])   # only where a row has it


class _Page(HTMLParser):
    """Tags, attributes and table cells of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.headers, self.body_rows, self._cell = [], [], [], 0, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag == "th":
            self._cell = ""
        if tag == "tr" and "tbody" in self.tags:
            self.body_rows += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "th":
            self.headers.append(self._cell)
            self._cell = None


@pytest.fixture
def report(tmp_path) -> tuple[Path, list[Path], list[tuple[str, str]]]:
    """report.html of the made-up rows, with their plots; the reference is a folder with a config."""
    lines, results = _rows()
    reference = tmp_path / "reference"
    reference.mkdir()
    from hwsim.configs import __file__ as configs
    shutil.copy(Path(configs).parent / "mnist_tt_zo.yaml", reference / "config.yaml")
    (reference / "mapping.txt").write_text("layer 0 -> engine <& escaped &>\n")
    spec = Spec(rows=[Row(name=line["row"]) for line in lines], reference=str(reference))
    figures = plots(lines, results, tmp_path, "made-up", classes=10, finetune_steps=2)
    path = tmp_path / "report.html"
    path.write_text(html_report(spec, reference, lines, figures, tmp_path))
    return path, figures, table_cells(lines)[1]


def test_report_html_is_self_contained_with_the_table_and_every_plot(report):
    path, figures, columns = report
    assert sorted(f.name for f in figures) == ["accuracy_vs_energy.png", "chips.png", "energy_breakdown.png"]
    page = _Page()
    page.feed(path.read_text())
    assert page.tags.count("table") == 1 and page.headers == [h for _, h in columns] and page.body_rows == 3
    images = [v for tag, k, v in page.attrs if tag == "img" and k == "src"]
    assert len(images) == len(figures)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert not {"script", "link", "iframe"} & set(page.tags)
    urls = [v for _, k, v in page.attrs if k in ("src", "href") and not v.startswith("data:")]
    assert not urls and "http://" not in path.read_text() and "https://" not in path.read_text()
    text = path.read_text()
    for heading in ("compare spec", "reference config.yaml", "reference mapping.txt", "versions"):
        assert heading in text
    assert "&lt;&amp; escaped &amp;&gt;" in text and "<& escaped" not in text      # text is escaped


BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no headless browser (chromium) installed; the structural check above holds")
def test_report_html_renders_in_a_headless_browser(report, tmp_path):
    path, figures, _ = report
    shot = tmp_path / "shot.png"
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,3000",
                           f"--screenshot={shot}", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == len(figures) and "<table>" in dom


def test_compare_of_runs_keeps_step_0_on_its_query_axis():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwsim.report import _queries_axis
    fig, ax = plt.subplots()
    ax.plot([0, 1620, 20000, 364500], [8, 10, 78, 91])
    _queries_axis(ax, [0, 1620, 20000, 364500])
    low, high = ax.get_xlim()
    assert ax.get_xscale() == "symlog" and low < 0 < 1620 and high > 364500
    assert 0.0 in list(ax.get_xticks())
    plt.close(fig)


def test_the_time_estimate_is_made_again_when_the_estimator_changes_phase(monkeypatch):
    """The hybrid's estimate, made in its cheap RGE phase, was 5x low after the switch to CGE."""
    from hwsim import progress
    monkeypatch.setattr(progress, "ESTIMATE_AFTER_S", 0.0)
    lines = []
    shown = progress.Progress("run", 20, 0, False, lines.append)
    for step in range(1, 21):
        shown.step(step, 0.1 if step <= 10 else 0.5, "rge" if step <= 10 else "cge")
    assert [line.split(":")[1].strip() for line in lines] == ["0.1 s per step (RGE)", "0.5 s per step (CGE)"]


def test_plots_of_a_spec_whose_rows_all_failed_are_left_out(tmp_path):
    failed = [{"row": "broken", "backend": "fixed", "chips": 1, "failed": 1, "error": "ConfigError: backend.bits"}]
    assert plots(failed, [], tmp_path, "made-up", classes=10) == []
