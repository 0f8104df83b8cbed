"""The rendered site: every lesson notebook executed and turned into static HTML that works offline.

    make site                                               # execute the notebooks, then build outputs/site/
    .venv/bin/python scripts/build_site.py --executed DIR   # reuse executed copies (e.g. outputs/notebooks/<time>/)

Why nbconvert: it is already installed (nbval and the notebooks' tooling need it), it is the Jupyter project's own
converter, and it runs offline; no other toolchain (Sphinx, Quarto, Node) to install on a teacher's laptop.
What this script adds to nbconvert's `lab` template:
  - math: nbconvert loads MathJax 2 from a CDN; we load MathJax 3 (`tex-svg-full.js`, vendored from the npm
    package `mathjax@3.2.2` in scripts/site_assets/mathjax/) from the site itself, so equations render offline;
  - folded solutions: cells tagged `solution` go inside `<details>`;
  - links: `NN_x.ipynb` becomes `NN_x.html`; other relative links point at the repository on GitHub; external
    images (the Colab badge) become text links, so every image on the site loads without network;
  - the prompt studio as a screenshot (the newest from tests/test_studio_browser.py), since widgets need a kernel
    (nbconvert's page still loads the static widget renderer from unpkg.com: online, saved widget states show;
    offline they are simply absent, the rest of the page is unaffected);
  - an index page listing the lessons in order, and TEACHING.md as teaching.html.
Executed notebooks are reused when their cells equal the current notebooks' cells (see `--executed`); otherwise
every notebook runs again through scripts/run_notebooks.py (a new outputs/notebooks/<time>/ folder).
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path

import nbformat
from bs4 import BeautifulSoup
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from helpers.paths import OUTPUTS_DIR  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
MATHJAX = ROOT / "scripts" / "site_assets" / "mathjax"
SCREENSHOTS = Path(os.environ.get("SD_SCREENSHOTS_DIR", ROOT / "outputs" / "screenshots"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
MATHJAX_CONFIG = """<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true},
  svg: {fontCache: 'global'},
  options: {enableMenu: false}
};
</script>
<script src="assets/mathjax/tex-svg-full.js" id="MathJax-script"></script>"""
STYLE = """<style>
.sd-nav {font: 15px sans-serif; padding: 8px 16px; background: #f4f4f4; border-bottom: 1px solid #ddd;}
.sd-nav a {margin-right: 1.5em;}
details.sd-solution {border-left: 4px solid #6a9; margin: 4px 0 12px 0; padding-left: 8px;}
details.sd-solution > summary {cursor: pointer; font: bold 14px sans-serif; color: #275; padding: 4px;}
figure.sd-studio img {max-width: 100%; border: 1px solid #ccc;}
body.sd-page {max-width: 1100px; margin: 0 auto; font-family: sans-serif; line-height: 1.5; padding: 0 16px;}
</style>"""


def lessons(folder: Path = NOTEBOOKS) -> list[Path]:
    """The lesson notebooks in order (04 appears whenever it exists)."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def cell_sources(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells]


def matching_executed(folder: Path, sources: list[Path]) -> bool:
    """Does `folder` hold an executed copy of every lesson, with exactly the current cells?"""
    for src in sources:
        copy = folder / src.name
        if not copy.exists():
            return False
        if cell_sources(nbformat.read(copy, as_version=4)) != cell_sources(nbformat.read(src, as_version=4)):
            return False
    return True


def newest_matching_run(sources: list[Path], runs_dir: Path | None = None) -> Path | None:
    """The newest executed run (outputs/notebooks/<time>/) whose notebooks have the current cells."""
    runs = sorted((runs_dir or OUTPUTS_DIR / "notebooks").glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((run for run in runs if matching_executed(run, sources)), None)


def execute_all(sources: list[Path]) -> Path:
    import run_notebooks

    before = set((OUTPUTS_DIR / "notebooks").glob("*/"))
    rc = run_notebooks.main([])
    (run,) = set((OUTPUTS_DIR / "notebooks").glob("*/")) - before
    if rc != 0:
        print(f"[site] some notebooks failed (see above): their pages show the error where it happened ({run})")
    return run


def title_and_blurb(nb) -> tuple[str, str]:
    """The notebook's `# title` and the first paragraph after it (the 'what you will be able to do')."""
    first = next(c for c in nb.cells if c.cell_type == "markdown")
    lines = first.source.splitlines()
    title = next(line[2:].strip() for line in lines if line.startswith("# "))
    paragraphs = [p.strip() for p in "\n".join(lines).split("\n\n")]
    blurb = next((p for p in paragraphs if p and not p.startswith(("#", "[![", "<"))), "")
    return title, blurb


def inline_markdown(text: str) -> str:
    """A title or paragraph of markdown as inline HTML (`code`, **bold**, links)."""
    import mistune

    return mistune.html(text).strip().removeprefix("<p>").removesuffix("</p>")


def newest_screenshot() -> Path | None:
    shots = [p for p in SCREENSHOTS.rglob("studio.png")] if SCREENSHOTS.exists() else []
    return max(shots, key=lambda p: p.stat().st_mtime) if shots else None


def fold_solutions(soup: BeautifulSoup, nb) -> int:
    """Wrap every cell tagged `solution` in <details>. The template marks code cells with a `celltag_solution`
    class but not markdown cells, so cells are matched by position (one `jp-Cell` div per notebook cell)."""
    divs = soup.select("div.jp-Cell")
    if len(divs) != len(nb.cells):
        raise RuntimeError(f"expected one jp-Cell per notebook cell ({len(nb.cells)}), found {len(divs)}")
    tagged = [div for div, cell in zip(divs, nb.cells) if "solution" in cell.metadata.get("tags", [])]
    for cell in tagged:
        details = soup.new_tag("details", attrs={"class": "sd-solution"})
        summary = soup.new_tag("summary")
        summary.string = "Solution"
        details.append(summary)
        cell.wrap(details)
    return len(tagged)


def fix_links(soup: BeautifulSoup, lesson_names: set[str], page: Path) -> None:
    for a in soup.find_all("a", href=True):
        href = a["href"]
        if href.startswith(("http://", "https://", "mailto:", "#", "data:")):
            continue
        path, _, anchor = href.partition("#")
        name = Path(path).name
        if name.endswith(".ipynb") and name in lesson_names:
            a["href"] = name[: -len(".ipynb")] + ".html" + (f"#{anchor}" if anchor else "")
        elif path:  # a file of the repository (README.md, helpers/...): show it on GitHub
            target = (page.parent / path).resolve()
            try:
                rel = target.relative_to(ROOT)
            except ValueError:
                continue
            a["href"] = f"{REPO_URL}/blob/main/{rel.as_posix()}" + (f"#{anchor}" if anchor else "")
    for img in soup.find_all("img", src=True):
        if img["src"].startswith(("http://", "https://")):  # e.g. the Colab badge: the site must work offline
            img.replace_with(img.get("alt") or "link")


def use_local_mathjax(soup: BeautifulSoup) -> None:
    for script in soup.find_all("script"):
        src = script.get("src", "")
        if "mathjax" in src.lower() or script.get("type") == "text/x-mathjax-config":
            script.decompose()  # nbconvert's MathJax 2 from the CDN, and its configuration
        elif src.startswith(("http://", "https://")):
            script.decompose()  # require.js / widget managers from CDNs: widgets need a kernel anyway
    soup.head.append(BeautifulSoup(MATHJAX_CONFIG + STYLE, "html.parser"))


def nav(names: list[str], i: int, titles: list[str]) -> str:
    links = ['<a href="index.html">All lessons</a>']
    if i > 0:
        links.append(f'<a href="{names[i - 1]}.html">&larr; {html.escape(titles[i - 1])}</a>')
    if i + 1 < len(names):
        links.append(f'<a href="{names[i + 1]}.html">{html.escape(titles[i + 1])} &rarr;</a>')
    return f'<nav class="sd-nav">{"".join(links)}</nav>'


def render_lesson(executed: Path, out: Path, names: list[str], i: int, titles: list[str], screenshot: str | None):
    nb = nbformat.read(executed, as_version=4)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(NOTEBOOKS)}})
    soup = BeautifulSoup(body, "html.parser")
    use_local_mathjax(soup)
    folded = fold_solutions(soup, nb)
    fix_links(soup, {f"{n}.ipynb" for n in names}, NOTEBOOKS / executed.name)
    bar = BeautifulSoup(nav(names, i, titles), "html.parser")
    soup.body.insert(0, bar)
    soup.body.append(BeautifulSoup(nav(names, i, titles), "html.parser"))
    if "studio" in names[i]:
        h1 = soup.find("h1")
        if screenshot:
            note = (
                f'<figure class="sd-studio"><img src="{screenshot}" alt="the prompt studio in a browser">'
                "<figcaption>The prompt studio as it looks in a browser (headless Chromium, "
                "tests/test_studio_browser.py). Widgets need a running kernel: open the notebook in Jupyter "
                "to use it.</figcaption></figure>"
            )
        else:
            note = (
                "<p><em>The prompt studio is a live app: open this notebook in Jupyter to use it (no screenshot "
                "yet: run tests/test_studio_browser.py where chromium is installed to make one).</em></p>"
            )
        h1.insert_after(BeautifulSoup(note, "html.parser"))
    if soup.title:
        soup.title.string = titles[i]
    (out / f"{names[i]}.html").write_text(str(soup))
    return folded


def render_markdown_page(source: Path, out: Path, title: str) -> None:
    import mistune

    md = mistune.create_markdown(plugins=["table", "strikethrough"])
    body = md(source.read_text())
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{MATHJAX_CONFIG}{STYLE}</head>
<body class="sd-page"><nav class="sd-nav"><a href="index.html">All lessons</a></nav>{body}</body></html>"""
    soup = BeautifulSoup(page, "html.parser")
    fix_links(soup, set(), source)
    (out / f"{source.stem.lower()}.html").write_text(str(soup))


def build(out: Path, executed: Path | None = None) -> dict:
    t0 = time.time()
    sources = lessons()
    if executed is None:
        executed = newest_matching_run(sources)
        print(f"[site] reusing the executed notebooks in {executed}" if executed else "[site] executing the notebooks")
    if executed is None:
        executed = execute_all(sources)
    elif not matching_executed(executed, sources):
        print(f"[site] note: {executed} holds notebooks whose cells differ from notebooks/ (building anyway)")
    if out.exists():
        shutil.rmtree(out)
    (out / "assets" / "mathjax").mkdir(parents=True)
    shutil.copy2(MATHJAX / "tex-svg-full.js", out / "assets" / "mathjax")
    shutil.copy2(MATHJAX / "LICENSE", out / "assets" / "mathjax")
    shot = newest_screenshot()
    if shot:
        shutil.copy2(shot, out / "assets" / "studio.png")
    names = [s.stem for s in sources]
    info = [title_and_blurb(nbformat.read(s, as_version=4)) for s in sources]
    titles = [t.replace("`", "").replace("**", "") for t, _ in info]  # plain text for <title> and the nav bar
    folded = {}
    for i, name in enumerate(names):
        folded[name] = render_lesson(
            executed / f"{name}.ipynb", out, names, i, titles, "assets/studio.png" if shot else None
        )
        print(f"[site] {name}.html ({folded[name]} solutions folded)", flush=True)
    teaching = ROOT / "TEACHING.md"
    if teaching.exists():
        render_markdown_page(teaching, out, "Teacher's guide")
    items = "\n".join(
        f'<li><a href="{n}.html">{inline_markdown(t)}</a><br><span>{inline_markdown(b)}</span></li>'
        for n, (t, b) in zip(names, info)
    )
    guide = '<p><a href="teaching.html">Teacher\'s guide</a>: a 90-minute lesson, a three-lesson course.</p>'
    (out / "index.html").write_text(
        f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Stable Diffusion, step by step</title>{STYLE}</head>
<body class="sd-page"><h1>Stable Diffusion, step by step</h1>
<p>Tested Jupyter notebooks, executed on {html.escape(time.strftime("%Y-%m-%d"))} (offline model on CPU unless a GPU
was present). Solutions to the exercises are folded: click <em>Solution</em> to open one.
Source: <a href="{REPO_URL}">{REPO_URL}</a>.</p>
<ol class="sd-lessons">
{items}
</ol>
{guide if teaching.exists() else ""}
</body></html>
"""
    )
    seconds = time.time() - t0
    print(f"[site] {len(names)} lessons -> {out}/index.html in {seconds:.0f} s (studio screenshot: {shot or 'none'})")
    return {"out": out, "executed": executed, "pages": names, "folded": folded, "screenshot": shot, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUTS_DIR / "site")
    parser.add_argument("--executed", type=Path, help="a folder of executed notebooks to reuse")
    args = parser.parse_args(argv)
    build(args.out.resolve(), args.executed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
