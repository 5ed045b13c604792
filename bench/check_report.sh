#!/usr/bin/env bash
# Check that an `evolve report` HTML file renders in a real browser with every plot loaded.
#
#   bench/check_report.sh REPORT.html [MIN_IMAGES]      (MIN_IMAGES defaults to 3)
#
# Renders the page in headless Chromium (offline: the page is self-contained) after adding a
# small script that writes each <img>'s naturalWidth into the DOM, then reads the dumped DOM:
# an image that failed to decode has naturalWidth 0. Exits 0 when at least MIN_IMAGES images
# are present and all of them loaded; prints one line per image either way.
#
# Needs Chromium: `apt-get install -y chromium` on Debian/Ubuntu (or set CHROMIUM=/path/to/it).
# tests/analysis/test_report.py runs the same check and is skipped, saying so, without it.
set -euo pipefail

report=${1:?usage: bench/check_report.sh REPORT.html [MIN_IMAGES]}
min_images=${2:-3}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [[ -z "$browser" ]]; then
    echo "no Chromium found: apt-get install -y chromium (or set CHROMIUM)" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
probe='<script>window.addEventListener("load",()=>{for(const i of document.images){i.setAttribute("data-natural-width",i.naturalWidth)}});</script>'
sed "s#</body>#${probe}</body>#" "$report" >"$work/page.html"

"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --user-data-dir="$work/profile" --virtual-time-budget=10000 \
    --dump-dom "file://$work/page.html" 2>"$work/stderr" >"$work/dom.html" || {
    cat "$work/stderr" >&2
    exit 2
}

total=0
broken=0
while read -r width; do
    total=$((total + 1))
    if [[ "$width" -gt 0 ]]; then echo "image $total: loaded, ${width}px wide"; else
        echo "image $total: NOT loaded"
        broken=$((broken + 1))
    fi
done < <(grep -o 'data-natural-width="[0-9]*"' "$work/dom.html" | grep -o '[0-9]\+')

if ((total < min_images)); then
    echo "only $total images found; expected at least $min_images" >&2
    exit 1
fi
if ((broken > 0)); then
    echo "$broken of $total images did not load" >&2
    exit 1
fi
echo "ok: all $total images loaded"
