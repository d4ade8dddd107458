"""Headless Chromium for the HTML report: the rendered DOM, and screenshots of one result's page.

Snakemake's report is a single-page app without URL routing: what a reader sees after clicking a
result is reached here by a copy of the report whose last script makes the same calls a click
makes (`app.showCategory`, `app.setView`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(page: Path, profile: Path, *args: str, budget_ms: int = 10_000, timeout: int = 120) -> str:
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args,
               page.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran (what a reader's browser shows), serialised."""
    return _run(page, profile, "--dump-dom")


def screenshot(page: Path, out_png: Path, profile: Path, size: tuple[int, int] = (1400, 1000)) -> Path:
    _run(page, profile, f"--screenshot={out_png.resolve()}", f"--window-size={size[0]},{size[1]}")
    return out_png


def report_object(html: str, name: str) -> dict:
    """A JSON object the report defines as `var <name> = {...};` (results, categories)."""
    start = html.index(f"var {name} = {{") + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(html, start)[0]


def page_showing(report_html: Path, result_path: str, out_html: Path) -> Path:
    """A copy of the report that opens on `result_path`'s page, as after clicking it in its category."""
    html = report_html.read_text()
    category = next(name for name, subcategories in report_object(html, "categories").items()
                    if any(result_path in paths for paths in subcategories.values()))
    script = f"""<script>
    window.addEventListener("load", function () {{
      var path = {json.dumps(result_path)};
      var entry = results[path];
      var kind = entry.mime_type === "text/html" ? "html" : "img";
      setTimeout(function () {{ app.showCategory({json.dumps(category)}); }}, 100);
      setTimeout(function () {{ app.setView({{content: kind, contentPath: entry.data_uri, resultPath: path}}); }}, 600);
    }});
    </script>"""
    index = html.rindex("</body>")
    out_html.write_text(html[:index] + script + html[index:])
    return out_html


def registered_results(report_html: Path) -> list[str]:
    """The paths of every result registered in the report (its `results` object's keys)."""
    return list(report_object(report_html.read_text(), "results"))


def screenshot_every_result(report_html: Path, out_dir: Path, profile: Path, size=(1400, 1000)) -> list[Path]:
    """One screenshot per result page a reader can open (the figures and the HTML tables)."""
    shots = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in registered_results(report_html):
        if Path(path).suffix not in (".png", ".svg", ".html"):
            continue
        name = Path(path).with_suffix("").as_posix().replace("/", "_")
        page = page_showing(report_html, path, out_dir / f"{name}.page.html")
        shots.append(screenshot(page, out_dir / f"{name}.png", profile, size))
        page.unlink()
    return shots
