"""The review page (synth.review) in a real headless browser, its decisions file, and the
builders honouring the decisions (synth.review_decisions, synth.perception).

The browser is the operating system's Chromium driven by Selenium through the OS
chromedriver (`make test` installs both on Debian when missing); the server is the real
command, `python -m synth.review`, on a loopback port.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from synth.manifest import read_manifest, resolve_images, write_manifest
from synth.mini_dataset import build_mini_dataset
from synth.review_decisions import (
    append_decision,
    decisions_path,
    export_accepted,
    group_items,
    rejected_ids,
)
from tests.conftest import REPO, TEST_CACHE


@pytest.fixture(scope="module")
def mini_manifest() -> Path:
    return build_mini_dataset(TEST_CACHE / "mini")["stage1_test"]


@pytest.fixture
def manifest(tmp_path, mini_manifest) -> Path:
    """A copy of the mini Stage-1 test manifest in tmp_path (absolute image paths), so the
    decisions file lands there and not in the shared cache."""
    samples = read_manifest(mini_manifest)
    for s in samples:
        s["images"] = [str(p) for p in resolve_images(s, mini_manifest)]
    out = tmp_path / "stage1_test.jsonl"
    write_manifest(out, samples)
    return out


def start_server(manifest: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "synth.review", str(manifest), "--port", "0",
                             "--reviewer", "tester"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, seen = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if line.startswith("review page: "):
            return proc, line.split()[2]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the review server did not start:\n" + "".join(seen))


@pytest.fixture
def server(manifest):
    proc, url = start_server(manifest)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    """Headless OS Chromium through Selenium; skipped only when no OS browser is there."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: "
                                    "pip install -e '.[dev]' (make test does it)")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver_bin = shutil.which("chromedriver")
    if not (binary and driver_bin):
        pytest.skip("no OS Chromium / chromedriver; `make test` installs them as root on "
                    "Debian (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    # Service with an explicit path: Selenium never tries to download a driver.
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=driver_bin))
    yield driver
    driver.quit()


def wait_for(driver, check, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(check)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; page says: "
                         f"{driver.find_element('tag name', 'body').text[:500]!r}")


def current(driver) -> str:
    return wait_for(driver, "return document.body.dataset.item", "an item on the page")


def press(driver, key: str, expect_item: str | None = None) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()
    if expect_item is not None:
        wait_for(driver, f"return document.body.dataset.item === {json.dumps(expect_item)}",
                 f"item {expect_item} after {key!r}")


def reviewed(driver) -> tuple[int, int, int]:
    p = driver.find_element("id", "progress")
    return tuple(int(p.get_attribute(f"data-{k}") or -1) for k in ("reviewed", "accepted",
                                                                     "total"))


def magenta_extent(png: bytes) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 (exclusive) of the pure-magenta pixels of a screenshot."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    mask = (rgb[..., 0] > 220) & (rgb[..., 1] < 40) & (rgb[..., 2] > 220)
    ys, xs = np.nonzero(mask)
    assert xs.size, "no box outline (magenta) in the screenshot"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_review_in_the_browser(browser, server, manifest):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    items = list(group_items(read_manifest(manifest)).items())
    ids = [key for key, _ in items]
    assert len(ids) >= 4
    browser.get(server)
    assert current(browser) == ids[0]
    assert reviewed(browser) == (0, 0, len(ids))

    # The box outline sits at the manifest's coordinates, scaled to the shown size.
    first = items[0][1][0]
    view = browser.find_element("id", "dist-view")
    wait_for(browser, "return document.getElementById('dist-img').naturalWidth > 0", "image")
    scale = view.size["width"] / first["image_size"][0]
    found = magenta_extent(view.screenshot_as_png)
    expected = [round(v * scale) for v in first["bbox"]]
    assert np.allclose(found, expected, atol=3), (found, expected, scale)
    assert browser.find_element("id", "ref-panel").is_displayed()  # full-reference beside
    info = browser.find_element("id", "info").text
    meta = first["meta"]
    assert meta["object"] in info and meta["distortion"] in info

    # Keys: A accept, R reject, U undo (back to that image), R again, arrows move.
    press(browser, "a", ids[1])
    press(browser, "r", ids[2])
    press(browser, "u", ids[1])
    assert reviewed(browser)[:2] == (1, 1)
    press(browser, "R", ids[2])
    press(browser, Keys.ARROW_RIGHT, ids[3])
    press(browser, Keys.ARROW_LEFT, ids[2])
    wait_for(browser, "return document.getElementById('progress').dataset.reviewed === '2'",
             "two reviewed")

    # Every decision is on disk already, in order, with the reviewer and all four ids.
    lines = [json.loads(x) for x in decisions_path(manifest).read_text().splitlines()]
    assert [(x["id"], x["decision"]) for x in lines] == [
        (ids[0], "accept"), (ids[1], "reject"), (ids[1], None), (ids[1], "reject")]
    assert all(x["reviewer"] == "tester" and x["time"] for x in lines)
    assert lines[0]["sample_ids"] == [s["id"] for s in items[0][1]]
    assert len(lines[0]["sample_ids"]) == 4

    # A reload resumes at the first unreviewed image, with the counts kept.
    browser.refresh()
    assert current(browser) == ids[2]
    assert reviewed(browser) == (2, 1, len(ids))

    # Filters: decision, then distortion type.
    Select(browser.find_element("id", "f-decision")).select_by_value("reject")
    wait_for(browser, f"return document.body.dataset.item === '{ids[1]}'", "the rejected one")
    assert browser.find_element("id", "position").text.startswith("1 / 1")
    Select(browser.find_element("id", "f-decision")).select_by_value("")
    distortion = items[3][1][0]["meta"]["distortion"]
    Select(browser.find_element("id", "f-distortion")).select_by_value(distortion)
    wait_for(browser, f"return document.body.dataset.item === '{ids[3]}'", "type filter")
    n_type = sum(s[0]["meta"]["distortion"] == distortion for _, s in items)
    assert browser.find_element("id", "position").text.startswith(f"1 / {n_type}")
    Select(browser.find_element("id", "f-distortion")).select_by_value("")

    # Zoom to the box (of the first image, which is small enough to zoom to): the outline
    # now spans most of the view.
    for i in (2, 1, 0):
        press(browser, Keys.ARROW_LEFT, ids[i])
    press(browser, "z")
    wait_for(browser, "return document.querySelector('#dist-view .stage').style.transform",
             "zoom")
    view = browser.find_element("id", "dist-view")  # the page was reloaded since
    x1, y1, x2, y2 = magenta_extent(view.screenshot_as_png)
    assert max((x2 - x1) / view.size["width"], (y2 - y1) / view.size["height"]) > 0.7

    # Summary and help views.
    press(browser, "s")
    wait_for(browser, "return !document.getElementById('summary').hidden", "summary")
    summary = browser.find_element("id", "summary").text
    assert items[0][1][0]["meta"]["distortion"] in summary and "100%" in summary
    press(browser, Keys.ESCAPE)
    press(browser, "?")
    assert browser.find_element("id", "help").is_displayed()

    # A traversal in the URL gets a refusal, not the file.
    browser.get(server + "image?path=../../../../../../etc/passwd")
    assert "not an image of this manifest" in browser.page_source
    assert "root:" not in browser.page_source


def test_malformed_manifest_and_missing_image_show_a_message(browser, tmp_path, manifest):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text().splitlines()[0] + "\n{not json\n")
    proc, url = start_server(bad)
    try:
        browser.get(url)
        wait_for(browser, "return !document.getElementById('message').hidden", "the message")
        text = browser.find_element("id", "message").text
        assert "bad.jsonl:2" in text and "not valid JSON" in text
        assert "Traceback" not in browser.page_source
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    samples = read_manifest(manifest)
    gone = samples[0]["images"][-1]
    for s in samples:
        s["images"] = [tmp_path / "gone.png" if p == gone else p for p in s["images"]]
        s["images"] = list(map(str, s["images"]))
    holed = tmp_path / "holed.jsonl"
    write_manifest(holed, samples)
    proc, url = start_server(holed)
    try:
        browser.get(url)
        wait_for(browser, "return document.querySelector('#dist-view .missing')", "the note")
        assert "gone.png" in browser.find_element("id", "message").text
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def request(url: str, raw_path: str, method: str = "GET", body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request with the path sent exactly as written (no client-side normalisation)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    headers = {"Host": u.netloc, "Content-Length": str(len(body)), **(headers or {})}
    conn.putrequest(method, raw_path, skip_host=True, skip_accept_encoding=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders(body)
    r = conn.getresponse()
    return r.status, r.read()


def test_only_manifest_images_are_served(server, manifest):
    u = urlsplit(server)
    assert u.hostname == "127.0.0.1"  # the default binding: this machine only
    image = read_manifest(manifest)[0]["images"][-1]
    status, body = request(server, "/image?path=" + image)
    assert status == 200 and body.startswith(b"\x89PNG")
    for path in ("/image?path=../../../../etc/passwd", "/image?path=%2Fetc%2Fpasswd",
                 f"/image?path={manifest}", "/image?path=" + image + "/../../../etc/passwd",
                 "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/static/../review.py",
                 "/static/index.html", "/../../../etc/passwd", "/image/../synth/review.py"):
        status, body = request(server, path)
        assert status in (400, 403, 404), (path, status)
        assert b"root:" not in body and b"import" not in body, path
    # DNS rebinding (another host name) and a cross-site form post are refused too.
    assert request(server, "/api/items", headers={"Host": f"evil.example:{u.port}"})[0] == 403
    form = json.dumps({"id": "x", "decision": "reject"}).encode()
    assert request(server, "/api/decision", "POST", form,
                   {"Content-Type": "text/plain"})[0] == 415
    assert not decisions_path(manifest).exists()


def test_hostile_decision_posts_are_refused_and_lines_stay_lines(server, manifest):
    """Four POSTs to /api/decision that went wrong before: nested JSON answered 500
    (RecursionError), Content-Length 10**12 with a 2-byte body got no answer (the server
    waited for the rest until the client gave up), a non-string reviewer was stored as a
    Python repr, and U+2028 in a reviewer name was written raw (a reader that splits on
    Unicode line breaks then saw two lines)."""
    key = next(iter(group_items(read_manifest(manifest))))
    json_type = {"Content-Type": "application/json"}

    def post(record) -> int:
        body = record if isinstance(record, bytes) else json.dumps(
            record, ensure_ascii=False).encode()
        return request(server, "/api/decision", "POST", body, json_type)[0]

    assert post(b"[" * 30000 + b"]" * 30000) == 400   # 60 kB: under the 64 KiB limit
    assert post({"id": key, "decision": "accept", "reviewer": {"name": "x"}}) == 400
    assert post({"id": key, "decision": "accept", "reviewer": 7}) == 400
    assert not decisions_path(manifest).exists()

    u = urlsplit(server)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(f"POST /api/decision HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: "
                     "application/json\r\nContent-Length: 1000000000000\r\n\r\n{}".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 413")   # at once, not after 5 s

    assert post({"id": key, "decision": "accept", "reviewer": "ana\u2028bo"}) == 200
    text = decisions_path(manifest).read_text(encoding="utf-8")
    assert "\u2028" not in text and len(text.splitlines()) == 1
    assert json.loads(text)["reviewer"] == "ana\u2028bo"


def test_export_accepted_and_perception_never_rebuilds_rejected(tmp_path, manifest, capsys):
    from synth.perception import build_perception
    from synth.perception_plan import Settings
    from synth.review import main
    from tests.test_perception_builder import write_sources

    items = list(group_items(read_manifest(manifest)).items())
    append_decision(manifest, items[0][0], [s["id"] for s in items[0][1]], "accept", "me")
    append_decision(manifest, items[1][0], [s["id"] for s in items[1][1]], "reject")
    out = tmp_path / "sub" / "accepted.jsonl"
    assert main([str(manifest), "--export-accepted", str(out)]) == 0
    printed = capsys.readouterr().out
    total = len(items)   # distorted images of the mini Stage-1 test split (18 today)
    assert total > 2 and f"accept=1  reject=1  unreviewed={total - 2}  total={total}" in printed
    kept = read_manifest(out)
    assert [s["id"] for s in kept] == [s["id"] for s in items[0][1]]
    assert all(p.is_file() for s in kept for p in resolve_images(s, out))
    assert export_accepted(manifest, tmp_path / "again.jsonl")["samples_written"] == 4

    # The builder: reject one distorted image, delete its lines by hand, rebuild.
    from synth.mini_dataset import ASSET, load_photos

    src = write_sources(tmp_path / "src", load_photos())
    built = tmp_path / "built"
    settings = Settings(test_size=0.25)
    build_perception(src, ASSET, built, settings, workers=1, progress=False)
    train = built / "stage1_train.jsonl"
    groups = group_items(read_manifest(train))
    victim, victim_samples = next(iter(groups.items()))
    append_decision(train, victim, [s["id"] for s in victim_samples], "reject")
    write_manifest(train, [s for s in read_manifest(train) if s["meta"]["job_id"] != victim])
    summary = build_perception(src, ASSET, built, settings, workers=1, progress=False)
    assert summary["rejected_not_rebuilt"] == 1 and summary["written_images"] == 0
    assert victim not in group_items(read_manifest(train))
    assert rejected_ids(train) == {s["id"] for s in victim_samples}


def test_decisions_file_survives_a_torn_write_and_refuses_hand_edits(tmp_path):
    from synth.review_decisions import read_decisions

    m = tmp_path / "m.jsonl"
    append_decision(m, "img1", ["img1-a", "img1-b"], "reject", "me")
    path = decisions_path(m)
    assert path.name == "m.decisions.jsonl"
    with path.open("a") as f:
        f.write('{"id": "img2", "sample_ids": ["img2-a"], "deci')  # a crash mid-write
    assert set(read_decisions(m)) == {"img1"}
    append_decision(m, "img2", ["img2-a"], "accept")  # repairs the tail first
    append_decision(m, "img1", ["img1-a", "img1-b"], None)  # undo
    lines = path.read_text().splitlines()
    assert [json.loads(x)["decision"] for x in lines] == ["reject", "accept", None]
    assert {k: v["decision"] for k, v in read_decisions(m).items()} == {"img2": "accept"}
    assert rejected_ids(m) == set()
    with pytest.raises(ValueError, match="decision must be"):
        append_decision(m, "img1", ["img1-a"], "maybe")
    path.write_text("garbage\n" + path.read_text())
    with pytest.raises(ValueError, match="m.decisions.jsonl:1: .*edited by hand"):
        read_decisions(m)
