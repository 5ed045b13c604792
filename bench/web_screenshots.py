"""Screenshots of every page of a running `evolve serve`, for docs/web.md, taken in headless Chromium.

    evolve serve -w WORKSPACE --port 8765 &
    python bench/web_screenshots.py http://127.0.0.1:8765/ docs/web --select g0013

Each page is opened, given time to draw, and saved as a PNG reduced to 256 colours (Pillow), so
the files stay small. `--select ID` also opens that individual in the tree's side panel, and
saves the panel scrolled down to its diffs as individual.png. Any
error the page's scripts log makes the script fail, so a broken page is never documented.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from io import BytesIO
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PAGES = (("overview", ""), ("progress", "progress"), ("tree", "tree"), ("transfer", "transfer"),
         ("operators", "operators"))  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        sys.exit("error: no chromium on PATH (apt-get install -y chromium)")
    return found


def save(png: bytes, path: Path) -> Path:
    image = Image.open(BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the served view, e.g. http://127.0.0.1:8765/")
    ap.add_argument("out", type=Path, help="folder for the PNG files")
    ap.add_argument("--select", default=None, help="an individual to open in the tree's side panel")
    ap.add_argument("--run", default=None, help="the run to show (default: the server's)")
    ap.add_argument("--width", type=int, default=1360)
    ap.add_argument("--height", type=int, default=860)
    args = ap.parse_args()
    base = args.url.rstrip("/") + "/"
    query = f"?run={args.run}" if args.run else ""
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        for name, path in PAGES:
            anchor = f"#{args.select}" if name == "tree" and args.select else ""
            page.goto(base + path + query + anchor)
            page.wait_for_function("() => window.autoevolve && window.autoevolve.renders > 0")
            if name == "tree" and args.select:
                page.wait_for_selector("#detail-title")
            page.wait_for_function(
                "() => [...document.images].every((i) => i.complete && i.naturalWidth > 0)"
            )
            page.wait_for_timeout(800)  # animations and the curve's frame
            shot = save(page.screenshot(full_page=name not in ("tree",)), args.out / f"{name}.png")
            print(f"wrote {shot} ({shot.stat().st_size // 1024} KB)")
            if name == "tree" and args.select:  # the side panel again, scrolled down to the diffs
                page.locator("#detail h3", has_text="Diff against").first.evaluate(
                    "(e) => e.scrollIntoView()"
                )
                page.wait_for_timeout(300)
                shot = save(page.screenshot(), args.out / "individual.png")
                print(f"wrote {shot} ({shot.stat().st_size // 1024} KB)")
        browser.close()
    if errors:
        sys.exit("error: the pages logged errors:\n" + "\n".join(errors))


if __name__ == "__main__":
    main()
