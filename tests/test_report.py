"""The HTML batch report: valid, self-contained, one card per image, rendered and filtered in Chromium."""

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from allscan.run.batch import run_batch
from allscan.results.report import render_report, write_report
from allscan.results.types import ImageResult, RunCounts, Score
from allscan.results.tables import RunInfo
from tests.utils import write_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VOID = {"meta", "img", "input", "br", "hr", "link"}


class _Checker(HTMLParser):
    """Checks that tags nest properly and collects cards and every URL-bearing attribute."""

    def __init__(self):
        super().__init__()
        self.stack, self.cards, self.urls, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if "card" in (attrs.get("class") or "").split():
            self.cards.append(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.urls.append(attrs[key])

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>")
        else:
            self.stack.pop()


def _check(text):
    checker = _Checker()
    checker.feed(text)
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


def _info():
    return RunInfo("0", "t0", "t1", "host", "allscan predict x", "digest", [], 0.5, (0.4, 0.6))


def _score(p):
    return Score(p, "ALL" if p >= 0.5 else "normal", 0.4 <= p < 0.6, int(p >= 0.5) * 4,
                 {"resnet50": p, "efficientnet_b3": p, "alexnet": p, "vgg16": p})


@pytest.fixture()
def mixed_report(tmp_path):
    results = []
    for i, p in enumerate([0.95, 0.55, 0.1, 0.2, 0.85, 0.05]):
        path = write_image(tmp_path / "imgs" / f"img{i}.png", seed=i, size=64)
        results.append(ImageResult(path, f"{i:064d}", 64, 64, _score(p)))
    results.append(ImageResult(tmp_path / "imgs" / "broken.png", error="not a recognised image file"))
    counts = RunCounts()
    for r in results:
        counts.add(r)
    report = tmp_path / "report.html"
    write_report(report, results, _info(), counts)
    return report


def test_report_is_valid_self_contained_and_sorted(mixed_report):
    text = mixed_report.read_text(encoding="utf-8")
    checker = _check(text)
    assert len(checker.cards) == 7
    assert [c["data-verdict"] for c in checker.cards][:1] == ["ALL"]
    assert checker.cards[0]["data-review"] == "yes"  # the flagged image comes first
    assert len(checker.urls) == 6 and all(u.startswith("data:image/jpeg;base64,") for u in checker.urls)
    assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text


def test_predict_report_has_one_card_per_image(ensemble, tmp_path):
    for i in range(4):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    (tmp_path / "in" / "bad.png").write_bytes(b"broken")
    report = tmp_path / "out" / "report.html"
    run_batch([tmp_path / "in"], tmp_path / "r.csv", ensemble, report=report)
    assert len(_check(report.read_text(encoding="utf-8")).cards) == 5


def _chromium(*args, timeout=60):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--user-data-dir=" + str(Path(args[0]).parent / "chromium-profile"), *args[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_renders_cards_and_filter_hides_normal(mixed_report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(str(tmp_path / "x"), f"--screenshot={shot}", "--window-size=1200,900", mixed_report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 20  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # thumbnails and coloured bars drawn

    dom = _chromium(str(tmp_path / "x"), "--dump-dom", mixed_report.as_uri() + "#verdict=ALL").stdout
    cards = re.findall(r'<div class="card[^"]*"[^>]*>', dom)
    assert len(cards) == 7
    for card in cards:
        hidden = " hidden" in card
        assert hidden == ('data-verdict="ALL"' not in card), card


def test_a_report_rewritten_with_kept_pictures_decodes_each_unchanged_image_once(tmp_path, monkeypatch):
    """A watch rewrites its report every half minute: each rewrite decoded every image again."""
    from allscan.results import report as report_module
    from allscan.results.report import ReportPictures

    paths = [write_image(tmp_path / f"f{i}.png", seed=i) for i in range(3)]
    results = [ImageResult(p, "", 64, 64, None) for p in paths]
    decoded = []
    real = report_module.decode_file
    monkeypatch.setattr(report_module, "decode_file", lambda path, *a: decoded.append(path) or real(path, *a))
    kept = ReportPictures(keep=True)
    first = render_report(results, _info(), RunCounts(), tmp_path, pictures=kept)
    assert render_report(results, _info(), RunCounts(), tmp_path, pictures=kept) == first
    assert sorted(decoded) == sorted(paths)
    write_image(paths[0], seed=9)  # a file that changed is decoded again
    render_report(results, _info(), RunCounts(), tmp_path, pictures=kept)
    assert len(decoded) == 4 and decoded[-1] == paths[0]


@pytest.mark.parametrize("name", ["x');alert(document.domain);('.png", "case #12.png", "O'Brien field1.png"])
def test_a_heatmap_name_is_data_to_the_script_and_a_whole_link(name, tmp_path):
    """The heatmap's path went into the click handler's JavaScript escaped for HTML only: an apostrophe broke
    the handler, a crafted name ran its script, and '#' cut the link short."""
    from urllib.parse import unquote

    image = write_image(tmp_path / "imgs" / "a.png", size=64)
    figure = tmp_path / "maps" / name
    figure.parent.mkdir()
    figure.write_bytes(b"png")
    result = ImageResult(image, "0" * 64, 64, 64, _score(0.9), heatmap=str(figure))
    counts = RunCounts()
    counts.add(result)
    report = tmp_path / "report.html"
    write_report(report, [result], _info(), counts)
    checker = _Checker()
    handlers, targets = [], []

    def collect(tag, attrs):
        attrs = dict(attrs)
        handlers.extend(v for k, v in attrs.items() if k.startswith("on"))
        targets.extend(attrs[k] for k in ("href", "data-heatmap") if k in attrs and not attrs[k].startswith("#"))

    checker.handle_starttag = collect
    checker.feed(report.read_text(encoding="utf-8"))
    assert targets and all(unquote(t) == f"maps/{name}" for t in targets)
    assert all("#" not in t and "'" not in t for t in targets)
    assert not any("maps" in h or "alert" in h for h in handlers)  # the script gets the path as data only
