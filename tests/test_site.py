"""The rendered site in a real browser: `make site`'s pages opened in headless Chromium (Debian's `chromium` +
`chromium-driver`, as tests/test_studio_browser.py uses), with no network: every image loads, the math is typeset
by the vendored MathJax, every internal link points at a file of the site, solutions are folded; a screenshot of
the front page goes to outputs/screenshots/site-front.png.

The site is built from the notebooks as nbval executed them earlier in the same session (tests/conftest.py runs
this file last), so `make test` executes each notebook once. Run alone, it reuses an earlier `make run` / `make site`
whose cells equal the current ones, else executes every notebook (a few minutes on a CPU).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))

pytestmark = pytest.mark.browser

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
SCREENSHOTS = Path(os.environ.get("SD_SCREENSHOTS_DIR", REPO_ROOT / "outputs" / "screenshots"))
WAIT = 60

PAGE_STATE = """
const imgs = [...document.images];
return {
  images: imgs.length,
  broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80)),
  math: document.querySelectorAll('mjx-container').length,
  mathErrors: document.querySelectorAll('mjx-merror').length,
  rawDollars: [...document.querySelectorAll('.jp-MarkdownOutput')].filter(e => /\\$\\$|\\\\frac|\\\\bar/.test(e.innerText)).length,
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  solutions: document.querySelectorAll('details.sd-solution').length,
  openSolutions: document.querySelectorAll('details.sd-solution[open]').length,
};
"""


def executed_by_nbval(session: pytest.Session, lessons: list[Path], folder: Path) -> Path | None:
    """Write every lesson as nbval executed it in this session (its cells with the outputs nbval collected) to
    `folder`; None unless every lesson ran here with every code cell run (or tagged to skip) and no error."""
    cells: dict[str, list] = {}
    for item in session.items:
        if type(item).__name__ == "IPyNbCell":  # nbval's item: one per code cell, in order
            cells.setdefault(item.path.name, []).append(item)
    for src in lessons:
        items = cells.get(src.name, [])
        nb = copy.deepcopy(items[0].parent.nb) if items else None
        code = [cell for cell in nb.cells if cell.cell_type == "code"] if nb else []
        if not items or len(code) != len(items):
            return None
        count = 0
        for cell, item in zip(code, items):
            if item.options["skip"]:
                cell.outputs, cell.execution_count = [], None
                continue
            outputs = item.test_outputs
            if outputs is None or any(out.output_type == "error" for out in outputs):
                return None
            count += 1
            cell.outputs = [nbformat.from_dict(dict(out)) for out in outputs]
            cell.execution_count = count
            for out in cell.outputs:
                if out.output_type == "execute_result":
                    out.execution_count = count
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def site(request, tmp_path_factory) -> Path:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"chromium not found ({CHROMIUM}, {CHROMEDRIVER}): run `bash scripts/setup_browser.sh` (as root)")
    import build_site

    # executed notebooks: SD_SITE_EXECUTED, else nbval's run in this session, else the newest `make run`/`make site`
    # run with the current cells (the tests' own outputs/ is a sandbox, so look in the repository's), else
    # build_site executes them
    lessons = build_site.lessons()
    executed = os.environ.get("SD_SITE_EXECUTED")
    executed = (
        Path(executed)
        if executed
        else executed_by_nbval(request.session, lessons, tmp_path_factory.mktemp("nbval-executed"))
        or build_site.newest_matching_run(lessons, REPO_ROOT / "outputs" / "notebooks")
    )
    print(f"[site] executed notebooks: {executed or 'none yet, executing them'}")
    out = tmp_path_factory.mktemp("site") / "site"
    report = build_site.build(out, executed)
    assert report["pages"] and (out / "index.html").exists()
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--proxy-server=http://127.0.0.1:9",  # no network: a site that needs a CDN fails here
        "--proxy-bypass-list=<-loopback>",
        f"--user-data-dir={profile}",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, page: Path) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    has_math = "MathJax-script" in page.read_text()
    if has_math:  # MathJax typesets after load: wait for its startup promise
        browser.set_script_timeout(WAIT)
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const wait = () => (window.MathJax && MathJax.startup && MathJax.startup.promise)"
            "  ? MathJax.startup.promise.then(() => done(true)) : setTimeout(wait, 100); wait();"
        )
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
    return browser.execute_script(PAGE_STATE)


def test_every_page_renders_offline(site, browser):
    import build_site

    pages = sorted(site.glob("*.html"))
    lessons = [p for p in pages if p.name[:2].isdigit()]
    assert [p.stem for p in lessons] == [nb.stem for nb in build_site.lessons()]  # every lesson, in order
    index = (site / "index.html").read_text()
    assert [index.index(f'href="{p.name}"') for p in lessons] == sorted(
        index.index(f'href="{p.name}"') for p in lessons
    )
    for page in pages:
        state = open_page(browser, page)
        assert not state["broken"], (page.name, state["broken"])
        for href in state["links"]:
            url = urlparse(href)
            if url.scheme == "file":
                target = Path(unquote(url.path))
                assert target.exists() and site in target.parents, (page.name, href)
            else:
                assert url.scheme in ("http", "https", "mailto"), (page.name, href)
        if page in lessons:
            assert state["images"] > 0, (page.name, "no figure: were the notebooks executed?")
            assert state["math"] > 0 and state["mathErrors"] == 0, (page.name, state)
            assert state["rawDollars"] == 0, (page.name, "TeX left untypeset")
            assert state["solutions"] >= 3 and state["openSolutions"] == 0, (page.name, state["solutions"])
        print(f"{page.name}: {state['images']} images, {state['math']} formulas, {state['solutions']} folded solutions")

    studio = next(p for p in lessons if "studio" in p.name).read_text()
    assert 'class="sd-studio"' in studio or "no screenshot yet" in studio

    browser.get((site / "index.html").as_uri())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "site-front.png"))
    lesson = open_page(browser, next(p for p in lessons if "theory" in p.name))
    assert lesson["math"] > 0
    assert browser.save_screenshot(str(SCREENSHOTS / "site-lesson.png"))
