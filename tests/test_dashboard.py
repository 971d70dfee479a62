"""The static dashboard: built from run folders (their history) and speed reports, it shows each headline
over runs by date and commit against the paper's number, and opens in a real browser (headless Chromium)
from disk with every image loaded and no error."""
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from omnibench import dashboard
from omnibench.protocol import OmnibenchError

ROOT = Path(__file__).resolve().parent.parent
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def history_run(folder, model="omnimamba", chash="cafe0123", runs=(("2026-01-02T10:00:00+00:00", "a" * 40, 0.81),
                                                                      ("2026-02-03T10:00:00+00:00", "b" * 40, 0.84))):
    """A run folder as the runner leaves it after two runs of one configuration."""
    (folder / "history").mkdir(parents=True)
    for created, commit, f1 in runs:
        data = {"model": model, "config_hash": chash, "results": {"pope": {"pope_f1": f1, "pope_accuracy": f1}},
                "headline": {"pope": {"table": "table1_understanding", "column": "POPE", "metric": "pope_f1", "scale": 100.0}},
                "n_samples": {"pope": {"total": 9000, "failed": 0, "available": 9000}}, "warnings": [],
                "manifest": {"created_utc": created, "git": {"commit": commit, "dirty": False}}}
        stamp = created.replace("-", "").replace(":", "").replace("+0000", "Z")
        (folder / "history" / f"results_{stamp}.json").write_text(json.dumps(data))
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def test_page_shows_each_headline_over_runs_and_the_latest_against_the_paper(tmp_path):
    runs = history_run(tmp_path / "results" / "omnimamba_cafe0123")
    (runs / "partial" / "20260101").mkdir(parents=True)
    (runs / "partial" / "20260101" / "results.json").write_text("not even json")  # never read
    out = tmp_path / "site"
    assert dashboard.main([str(tmp_path / "results"), str(ROOT / "reports" / "speed"), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    # Two runs, not three: results.json is the newest history file.
    assert text.count("aaaaaaaa") == 1 and text.count("bbbbbbbb") == 3  # runs table; paper table label; section title
    assert "Headline metrics over runs" in text and "Latest run against the paper's tables" in text
    # The paper's Table 1 rows with the measured row last, in the paper's unit (84.0 for 0.84).
    assert re.search(r"OmniMamba\s+Mamba-2-1.3B\s+384\s+86.3", text)
    assert re.search(r"omnimamba cafe0123 \(omnibench, 2026-02-03 10:00 bbbbbbbb\)\s+84.0", text)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert "plots/headline_omnimamba_pope.png" in srcs and "plots/speed_trend_decode_ms_per_token.png" in srcs
    assert all((out / s).is_file() and (out / s).read_bytes()[:4] == b"\x89PNG" for s in srcs)
    # Nothing is fetched from elsewhere: no script, no stylesheet or image from a URL.
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page.replace('href="https://arxiv', ""))


def test_nothing_to_show_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert dashboard.main([str(tmp_path / "empty"), "--out", str(tmp_path / "site")]) == 2
    assert capsys.readouterr().err.startswith("error: no results.json, history/results_*.json or speed.json under")
    with pytest.raises(OmnibenchError, match="does not exist"):
        dashboard.collect([str(tmp_path / "missing")])


# Injected into a copy of the page: record every error and each image's state once the page has loaded.
PROBE = """<script>
window.__problems = [];
window.addEventListener('error', e => __problems.push('error: ' + (e.message || (e.target && e.target.src) || '?')), true);
const __consoleError = console.error;
console.error = (...a) => { __problems.push('console.error: ' + a.join(' ')); __consoleError(...a); };
window.addEventListener('load', () => {
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
                                    problems: __problems, text: document.body.innerText});
  document.body.appendChild(pre);
});
</script>"""


def browse(page: Path, profile: Path) -> dict:
    """Load `page` in headless Chromium (virtual time: no wall-clock wait) and read the probe's report."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(BROWSER is None, reason="no chromium binary installed (.ci/run installs Debian's chromium)")
def test_dashboard_of_the_committed_reports_opens_in_chromium(tmp_path):
    out = tmp_path / "site"
    assert dashboard.main([str(ROOT / "reports"), "--out", str(out)]) == 0
    report = browse(out / "index.html", tmp_path / "profile")
    assert report["problems"] == []
    assert len(report["images"]) >= 6 and all(ok for _, ok in report["images"]), report["images"]
    assert "omnibench dashboard" in report["text"] and "Latest speed report" in report["text"]
    assert "Headline metrics over runs" in report["text"] and "OmniMamba" in report["text"]
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800", f"--screenshot={shot}",
                    (out / "index.html").as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    # The probe can fail: a missing plot is reported as a broken image and an error.
    (out / "plots" / "speed_decode.png").unlink()
    report = browse(out / "index.html", tmp_path / "profile")
    assert ["plots/speed_decode.png", False] in report["images"] and report["problems"]
