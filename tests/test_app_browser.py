"""The arena as a person meets it, in headless Chromium: `musicrl app` with its defaults (tiny and
tiny-r), the leaderboard's table and plots after a vote, warnings that keep the pair, Play on a fresh pair, the layout on a phone. Screenshots go to
the test's tmp dir (printed)."""

import os
import re

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")

from musicrl.app.server import start_server  # noqa: E402
from musicrl.cli import build_parser  # noqa: E402
from musicrl.commands.app import prepare  # noqa: E402
from tests.browser import chromium  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
MAX_CHARS = 60


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`musicrl app` with no model flags (so: tiny and tiny-r), short clips and no rate limits."""
    data = tmp_path_factory.mktemp("arena")
    args = build_parser().parse_args(["app", "--data-dir", str(data), "--reload-every", "0", "--min-listen", "1",
                                      "--duration", "1.5", "--generate-rate", "0", "--vote-rate", "0",
                                      "--min-votes", "1", "--max-prompt-chars", str(MAX_CHARS)])  # fmt: skip
    demo, store, _ = prepare(args)
    with start_server(demo) as srv, chromium() as (api, browser):
        yield srv, api, browser, store, data


@pytest.fixture
def open_page(app):
    """open_page(width, height) -> (a page on the app, playwright's expect); closed after the test."""
    srv, api, browser, *_ = app
    pages = []

    def open_(width=1200, height=1400):
        pages.append(browser.new_page(viewport={"width": width, "height": height}))
        pages[-1].goto(srv.url)
        return pages[-1], api.expect

    yield open_
    for page in pages:
        page.close()


def _generate(page, expect, prompt="slow calm piano"):
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("A 0.0 / 1.0 s", timeout=30_000)


def _listen_both(page, expect):
    page.locator("#clip-a .play-pause-button").click()
    expect(page.locator("#status")).to_contain_text("A 1.0 / 1.0 s ✓", timeout=10_000)
    page.locator("#clip-b .play-pause-button").click()
    expect(page.locator("#status")).to_contain_text("Both clips heard", timeout=10_000)


def _no_error_badge(page):
    assert not re.search(r"\bError\b", page.locator("body").inner_text())
    assert page.locator(".error, [data-testid='error']").count() == 0


def test_two_models_by_default_and_a_vote_moves_the_leaderboard(app, open_page):
    page, expect = open_page()
    expect(page.locator("#rules")).to_contain_text("Listen to both clips")
    assert page.get_by_role("tab", name="Admin").count() == 0  # no admin secret, no admin tab
    expect(page.locator("#serving-note")).to_have_text("")  # two models: nothing to explain
    page.get_by_role("tab", name="Leaderboard").click()
    before = page.locator("#leaderboard-note").inner_text()
    page.get_by_role("tab", name="Vote").click()
    _generate(page, expect)
    expect(page.locator("#pair-prompt")).to_contain_text("slow calm piano")
    expect(page.locator("#head-a")).to_have_text("A")  # blind until the vote
    _listen_both(page, expect)
    page.locator("#vote-a").click()
    expect(page.locator("#reveal")).to_contain_text("you chose A", timeout=10_000)
    heads = page.locator("#head-a").inner_text() + page.locator("#head-b").inner_text()
    assert "tiny@" in heads and "tiny-r@" in heads  # named after the vote
    expect(page.locator("#next")).to_be_visible()
    page.get_by_role("tab", name="Leaderboard").click()
    expect(page.locator("#leaderboard-note")).not_to_have_text(before)
    table = page.locator("#leaderboard")
    for column in ("Rating", "95% interval", "Votes", "Win rate"):
        expect(table).to_contain_text(column)
    expect(table).to_contain_text("tiny-r@")
    expect(table).to_contain_text("tiny@")
    for plot in ("#ratings-plot", "#winrate-plot"):  # the figures, drawn afresh when the tab opens
        expect(page.locator(f"{plot} img")).to_be_visible(timeout=10_000)
        page.locator(plot).screenshot(path=str(app[4] / f"{plot[1:]}.png"))
    page.screenshot(path=str(app[4] / "leaderboard.png"), full_page=True)
    page.get_by_role("tab", name="Vote").click()
    page.locator("#next").click()  # the next pair, same prompt
    expect(page.locator("#head-a")).to_have_text("A", timeout=30_000)
    expect(page.locator("#next")).to_be_hidden()
    print(f"screenshots in {app[4]}")


def test_input_mistakes_warn_and_keep_the_pair(app, open_page):
    page, expect = open_page()
    _generate(page, expect)
    _listen_both(page, expect)
    status = page.locator("#status").inner_text()
    src = page.locator("#pair-prompt").inner_text()
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    expect(page.locator(".toast-body").last).to_contain_text("Type a prompt first", timeout=10_000)
    page.locator("#prompt textarea").fill("x" * (MAX_CHARS + 5))
    expect(page.locator("#prompt-count")).to_have_text(f"{MAX_CHARS + 5} / {MAX_CHARS} characters: too long")
    page.locator("#generate").click()
    expect(page.locator(".toast-body").last).to_contain_text(f"the limit is {MAX_CHARS}", timeout=10_000)
    _no_error_badge(page)
    assert page.locator("#pair-prompt").inner_text() == src and page.locator("#status").inner_text() == status
    expect(page.locator("#vote-a")).to_be_enabled()  # the pair still takes its vote
    page.locator("#vote-b").click()
    expect(page.locator("#reveal")).to_contain_text("you chose B", timeout=10_000)
    page.locator("#prompt textarea").fill("y" * 5000)  # after the vote: the reveal and closed pair stay
    page.locator("#next").click()
    expect(page.locator(".toast-body").last).to_contain_text("the limit is", timeout=10_000)
    expect(page.locator("#status")).to_contain_text("Vote saved")
    expect(page.locator("#vote-a")).to_be_disabled()
    expect(page.locator("#clip-a .play-pause-button")).to_be_visible()
    _no_error_badge(page)
    page.screenshot(path=str(app[4] / "warning.png"), full_page=True)


def test_play_on_a_fresh_pair_starts_on_the_first_click_20_times(app, open_page):
    """The player stops itself once its clip has loaded, which undid a Play pressed while it loaded
    (layout.PLAY_JS). 400 ms of network latency makes that window wide, as a busy server does."""
    page, expect = open_page()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 400, "downloadThroughput": -1,
                                                  "uploadThroughput": -1})  # fmt: skip
    for i in range(20):
        page.goto(app[0].url)  # a fresh page each time: its first pair is the one most likely to race
        _generate(page, expect)
        page.locator("#clip-a .play-pause-button").click()  # the moment the pair is on screen
        expect(page.locator("#status")).to_contain_text("A 1.0 / 1.0 s ✓", timeout=10_000)


def test_a_phone_keeps_the_prompt_box_wide(app, open_page):
    page, expect = open_page(width=390, height=844)
    box, body = page.locator("#prompt textarea").bounding_box(), page.viewport_size
    assert box["width"] >= 0.8 * body["width"], (box, body)
    _generate(page, expect)
    page.screenshot(path=str(app[4] / "phone.png"), full_page=True)
