"""End to end in a real headless browser (Playwright driving Debian's Chromium): two annotators label the pool,
one with the keyboard on a desktop, one by tapping on a phone-sized screen; then the database, the admin page's
agreement, and the admin page's export, which `raw-rm train` accepts.

Screenshots go to $RAW_RM_LABEL_SCREENSHOTS when set (to look at them), else to the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from label_support import LabelServer, correct_index, raw_rm, train_tiny, write_pool

from raw_rm.label.store import LabelStore

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture()
def browser(tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium: install Debian's package (apt-get install chromium) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (dev extra)")
    with sync_api.sync_playwright() as playwright:
        yield lambda name, viewport: playwright.chromium.launch_persistent_context(
            str(tmp_path / f"profile-{name}"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=viewport,
            accept_downloads=True,
        )


def _screens(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RAW_RM_LABEL_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _current(page) -> tuple[str, list[str]]:
    """(prompt, response texts in display order) of the item on screen."""
    return page.locator("#prompt").inner_text(), page.locator("#responses .card .text").all_inner_texts()


def _answer_and_wait(page, action) -> None:
    """Answer, then wait until the next item (or the done page) is on screen."""
    before = page.locator("#task").get_attribute("data-item")
    action()
    page.wait_for_function(
        "(before) => document.getElementById('task').dataset.item !== before || "
        "!document.getElementById('done').hidden",
        arg=before,
    )


def _label_as_alice(page, shots: Path) -> None:
    """Keyboard only: 1 = A clearly better, 5 = B clearly better, ranks + Enter on the k-wise item; a note and an
    aspect answer on the first item."""
    first = True
    while page.locator("#task").is_visible():
        prompt, texts = _current(page)
        if len(texts) == 3:
            for position, text in enumerate(texts):
                page.locator("#responses select").nth(position).select_option(str({"7": 0, "9": 1, "12": 2}[text]))
            page.locator("body").click(position={"x": 5, "y": 5})  # focus away from the select: keys go to the page
            page.screenshot(path=str(shots / "annotate_kwise_desktop.png"), full_page=True)
            _answer_and_wait(page, lambda: page.keyboard.press("Enter"))
            continue
        right = correct_index(prompt, texts)
        if first:
            page.locator("input[name='aspect-helpfulness']").nth(right).check()
            page.locator("#note").fill("the right sum")
            page.locator("body").click(position={"x": 5, "y": 5})
            page.screenshot(path=str(shots / "annotate_desktop.png"), full_page=True)
            first = False
        _answer_and_wait(page, lambda key="1" if right == 0 else "5": page.keyboard.press(key))


def _label_as_bob(page, shots: Path) -> None:
    """Taps on a phone: 'slightly better' buttons, the wrong answer on "5 + 5", skips the k-wise item."""
    first = True
    while page.locator("#task").is_visible():
        prompt, texts = _current(page)
        if first:
            page.screenshot(path=str(shots / "annotate_phone.png"), full_page=True)
            first = False
        if len(texts) == 3:
            _answer_and_wait(page, lambda: page.get_by_role("button", name="Skip").click())
            continue
        right = correct_index(prompt, texts)
        if prompt == "What is 5 + 5?":
            right = 1 - right
        label = "A is slightly better" if right == 0 else "B is slightly better"
        _answer_and_wait(page, lambda name=label: page.get_by_role("button", name=name).click())


def test_two_annotators_in_a_browser(tmp_path: Path, browser) -> None:
    shots = _screens(tmp_path)
    db = tmp_path / "b.db"
    server = LabelServer(
        db,
        "--pool",
        str(write_pool(tmp_path)),
        "--annotator",
        "alice",
        "--annotator",
        "bob",
        "--aspects",
        "helpfulness",
        cwd=tmp_path,
    )
    tokens = server.links()
    try:
        alice = browser("alice", DESKTOP)
        page = alice.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{server.base}/annotate#token={tokens['alice']}")
        page.wait_for_selector("#task:not([hidden])")
        assert "token" not in page.url  # the token left the address bar
        _label_as_alice(page, shots)
        assert (
            page.locator("#done").is_visible() and page.locator("#progress-text").inner_text() == "7 answered, 0 to go"
        )
        alice.close()

        bob = browser("bob", PHONE)
        page = bob.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{server.base}/annotate#token={tokens['bob']}")
        page.wait_for_selector("#task:not([hidden])")
        # Nothing wider than the phone's screen: no sideways scrolling.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        _label_as_bob(page, shots)
        page.screenshot(path=str(shots / "annotate_phone_done.png"), full_page=True)
        bob.close()

        admin = browser("admin", DESKTOP)
        page = admin.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{server.base}/admin")
        page.wait_for_function(
            "() => ['progress', 'agreement', 'kappa'].every((n) => {"
            "const i = document.getElementById('plot-' + n); return i.complete && i.naturalWidth > 0; })"
        )
        agreement = page.locator("#agreement").inner_text()
        rows = [r.split("\t") for r in page.locator("#progress-table tbody").inner_text().splitlines()]
        kappa = page.locator("#kappa-table tbody").inner_text()
        page.screenshot(path=str(shots / "admin.png"), full_page=True)
        with page.expect_download() as download:
            page.get_by_role("button", name="pairs (JSONL)").click()
        exported = tmp_path / "exported.jsonl"
        download.value.save_as(exported)
        admin.close()
        assert errors == []
    finally:
        server.stop()

    # The database: alice answered all 7 with her note and aspect on the first; bob 6 pairs and one skip.
    judged = LabelStore(str(db)).judgements()
    by = {(r.annotator, item): r.judgement for item, rs in judged.items() for r in rs}
    assert sorted(k for k in by if k[0] == "alice") == [("alice", i) for i in range(1, 8)]
    assert [by[("bob", i)].decision for i in range(1, 8)] == ["ranked"] * 6 + ["skip"]
    assert {by[("bob", i)].strength for i in range(1, 7)} == {"slight"}
    assert by[("alice", 7)].ranks == [0, 1, 2]
    notes = [j for j in by.values() if j.note]
    # The first item is "What is 0 + 0?", whose right answer is response_a (index 0) by the pool's design.
    assert len(notes) == 1 and notes[0].note == "the right sum" and notes[0].aspects == {"helpfulness": 0}

    # The agreement page: 6 pairs judged by both, bob wrong on one: 5/6 = 83.3%; kappa on directions: alice's
    # directions on the six pairs are the correct ones (+,-,+,-,+,- by the pool's design), bob's the same but item
    # 6 flipped: p_o = 5/6; alice + 3/6, - 3/6; bob + 4/6, - 2/6: p_e = (3*4 + 3*2) / 36 = 1/2; kappa = 2/3.
    assert "6 comparisons of 6 items judged by two or more annotators" in agreement
    assert "raw agreement 83.3%" in agreement
    assert [r[:4] for r in rows] == [["alice", "7", "0", "0"], ["bob", "6", "1", "0"]]
    assert kappa.split("\t")[:4] == ["alice / bob", "5 (83.3%)", "0.667", "6"]

    # The admin page's export: items 1-5 (both agree, weight 1), item 6 (1 vs 1) not written, the k-wise item's
    # three comparisons from alice alone (weight 1): 8 pairs that raw-rm train reads.
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) == 8 and {r["weight"] for r in rows} == {1.0}
    trained = train_tiny(exported, tmp_path / "run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "kept 8" in trained.stderr or "kept 8" in trained.stdout

    # The report, rendered in the same browser for a look.
    report = raw_rm(
        "label", "report", "--db", f"sqlite:///{db}", "--out", str(tmp_path / "report"), "--n-boot", "200", cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    viewer = browser("report", DESKTOP)
    page = viewer.new_page()
    page.goto((tmp_path / "report" / "report.html").as_uri())
    page.screenshot(path=str(shots / "report.png"), full_page=True)
    viewer.close()
