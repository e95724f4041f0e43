#!/usr/bin/env bash
# Re-make docs/report.png, the screenshot README shows: the batch report of sample_images/ scored by the
# shipped models (field and cell), opened in headless Chromium in a window tall enough for the cards and
# the top of the cell gallery below them (a headless screenshot of a scrolled page comes out blank, so the
# window is made tall instead). The run happens in a scratch folder so that the report's command line reads
# as README's caption gives it. ALLSCAN_MODELS and OUT override the models folder and the picture's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
models=$(cd "${ALLSCAN_MODELS:-$root/models}" && pwd)
out=$(realpath -m "${OUT:-$root/docs/report.png}")
[ -f "$models/cells/manifest.json" ] || { echo "error: no cell models in $models/cells: the gallery would be empty" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ln -s "$root/sample_images" "$work/sample_images"
(cd "$work" && PATH="$root/.venv/bin:$PATH" ALLSCAN_MODELS="$models" \
    allscan predict sample_images --out results.xlsx --heatmaps heatmaps --report report.html --quiet)
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$work/profile" \
    --screenshot="$work/report.png" --window-size=1280,1900 "file://$work/report.html" 2>/dev/null
mv "$work/report.png" "$out"
echo "$out"
