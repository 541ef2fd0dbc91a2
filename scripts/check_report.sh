#!/usr/bin/env bash
# Open the HTML report in headless Chromium and check that it renders with its images.
#
#   scripts/check_report.sh [REPORT]        (default reports/report.html)
#
# 1. --dump-dom of a copy of the report with a small inline check appended: after the load
#    event it counts the <img> elements and those that did not decode (naturalWidth 0); the
#    report itself has no JavaScript.
# 2. --screenshot of the report itself: the picture must not be blank.
# Exit 0: renders, every image decodes; 1: a check failed; 2: no report or no Chromium
# (CHROMIUM=/path/to/chrome picks the browser).
set -euo pipefail

report="${1:-reports/report.html}"
[[ -f "$report" ]] || { echo "check_report: $report: no such file (run cdae report)" >&2; exit 2; }
browser="${CHROMIUM:-}"
if [[ -z "$browser" ]]; then
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$b" >/dev/null 2>&1; then browser="$b"; break; fi
  done
fi
[[ -n "$browser" ]] || { echo "check_report: no chromium found (apt-get install chromium)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
       --disable-extensions --user-data-dir="$work/profile" --hide-scrollbars)

# 1. every <img> decodes (a copy of the report's folder, for images beside it)
mkdir "$work/site"
cp -r "$(dirname "$report")/." "$work/site/"
probe="$work/site/.check-$(basename "$report")"
python3 - "$report" "$probe" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
probe = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) { bad++; }
  }
  document.body.setAttribute('data-report-check', 'images=' + imgs.length + ' broken=' + bad);
});
</script>"""
text = open(src, encoding="utf-8").read()
if "</body>" not in text:
    sys.exit("check_report: no </body> in the report")
open(dst, "w", encoding="utf-8").write(text.replace("</body>", probe + "</body>", 1))
PY
dom="$(timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$probe" 2>/dev/null || true)"
verdict="$(grep -o 'data-report-check="[^"]*"' <<<"$dom" || true)"
if [[ -z "$verdict" ]]; then
  echo "check_report: FAIL: the page did not finish loading in $browser" >&2; exit 1
fi
echo "check_report: $verdict"
if ! grep -Eq 'images=[1-9][0-9]* broken=0"' <<<"$verdict"; then
  echo "check_report: FAIL: no images, or images that do not decode" >&2; exit 1
fi

# 2. the screenshot is not blank
shot="$work/shot.png"
timeout 120 "$browser" "${flags[@]}" --window-size=1200,2400 --screenshot="$shot" \
  "file://$(cd "$(dirname "$report")" && pwd)/$(basename "$report")" >/dev/null 2>&1 || true
[[ -s "$shot" ]] || { echo "check_report: FAIL: no screenshot" >&2; exit 1; }
python3 - "$shot" <<'PY'
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    gray = im.convert("L")
    hist = gray.histogram()
dark = sum(hist[:200]) / max(1, sum(hist))
print(f"check_report: screenshot {gray.size[0]}x{gray.size[1]}, {100 * dark:.1f}% non-white pixels")
sys.exit(0 if dark > 0.01 else "check_report: FAIL: the screenshot is blank")
PY
echo "check_report: OK"
