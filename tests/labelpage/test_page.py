"""The labelling page in a real headless browser (Debian's chromium, driven by Playwright): people rank
prompts by mouse and by keys; every ranking is on disk the moment it is made; a labeller resumes where
they stopped; two labellers' agreement; model text shows as text; a token guards the page."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rlhf.data import load_comparisons

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parents[2]

USER = {"role": "user", "content": "Name a colour. <script>window.pwned = 1</script>"}
ITEMS = [
    {"id": "a", "prompt": [USER], "responses": ["red", "blue <img src=x onerror=\"window.pwned=2\">", "green"]},
    {"id": "b", "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                           {"role": "user", "content": "count to two"}], "responses": ["1 2", "one", "2 1"]},
    {"id": "c", "prompt": [{"role": "user", "content": "say yes"}], "responses": ["yes", "no", "maybe"]},
]


@pytest.fixture
def to_label(tmp_path) -> Path:
    path = tmp_path / "to_label.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ITEMS))
    return path


class Server:
    """`instructrl label FILE` in its own process, on a free port."""

    def __init__(self, file: Path, *args: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "label", str(file), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        line = self.proc.stdout.readline()
        assert line.startswith("labelling page: "), line + self.proc.stdout.read()
        self.url = line.split(": ", 1)[1].strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # no clean shutdown: what is saved must already be on disk
        self.proc.wait(10)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def start(page, url: str, name: str) -> None:
    page.goto(url)
    page.fill("#name", name)
    page.click("#start")
    page.wait_for_selector("#work:not([hidden])")


def saved(page, item_id: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_have_text(f"saved prompt {item_id}")


def test_ranking_by_mouse_and_keys_survives_a_killed_server(browser, to_label):
    labels, out = to_label.with_suffix(".labels.jsonl"), to_label.with_suffix(".comparisons.jsonl")
    server = Server(to_label)
    try:
        page = browser.new_page()
        start(page, server.url, "alice")
        # the prompt's markup and the response's are text on the page, and neither ran
        assert "<script>window.pwned = 1</script>" in page.inner_text("#prompt")
        assert '<img src=x onerror="window.pwned=2">' in page.inner_text("#responses")
        assert page.evaluate("window.pwned") is None and page.locator("#responses img").count() == 0
        # by mouse: green best, then red; blue, the last one left, is the worst
        page.click("#responses li[data-index='2']")
        page.click("#responses li[data-index='0']")
        assert page.inner_text("#ranking") == "Your ranking: #3 > #1 > #2"
        page.click("#save")
        saved(page, "a")
        # the conversation shows each turn with its role; by keys: 1, 3 (then 2), a slip undone, Enter
        assert page.locator("#prompt .turn").count() == 3 and "assistant:" in page.inner_text("#prompt")
        for key in ("2", "Backspace", "1", "3", "Enter"):
            page.keyboard.press(key)
        saved(page, "b")
        assert [json.loads(x)["order"] for x in labels.read_text().splitlines()] == [[2, 0, 1], [0, 2, 1]]
    finally:
        server.kill()
    ranked = load_comparisons(out)
    assert [c.responses for c in ranked] == [("green", "red", 'blue <img src=x onerror="window.pwned=2">'),
                                             ("1 2", "2 1", "one")]
    assert json.loads(out.read_text().splitlines()[0])["labeller"]["name"] == "human:alice"

    server = Server(to_label)  # alice resumes at the prompt she has not ranked; bob ranks one she did
    try:
        page = browser.new_page()
        start(page, server.url, "alice")
        assert page.inner_text("#progress") == "alice: 2 of 3 prompts ranked"
        assert "say yes" in page.inner_text("#prompt")
        for key in ("1", "3", "Enter"):
            page.keyboard.press(key)
        saved(page, "c")
        assert page.is_visible("#finished")
        other = browser.new_page()
        start(other, server.url, "bob")
        for key in ("1", "2", "Enter"):  # red > blue > green: of alice's three pairs one alike
            other.keyboard.press(key)
        saved(other, "a")
        assert other.inner_text("#agreement-rows") == "alice · bob\t1\t33%"
    finally:
        server.kill()
    assert len(load_comparisons(out)) == 4


def test_a_token_guards_the_page(to_label):
    server = Server(to_label, "--token", "s3cret")
    try:
        base = server.url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "api/items", timeout=10)
        assert e.value.code == 403
        with urllib.request.urlopen(base + "api/items?token=s3cret", timeout=10) as r:
            assert [i["id"] for i in json.load(r)["items"]] == ["a", "b", "c"]
    finally:
        server.kill()
    refused = subprocess.run([sys.executable, "-m", "launcher.cli", "label", str(to_label), "--host", "0.0.0.0"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert refused.returncode == 2 and "beyond loopback the page is served only with --token" in refused.stderr


def test_rankings_of_a_changed_file_are_refused(to_label, capsys):
    from launcher.cli import main

    to_label.with_suffix(".labels.jsonl").write_text(json.dumps({"id": "z", "labeller": "a", "order": [0, 1]}) + "\n")
    assert main(["label", str(to_label), "--port", "0"]) == 2
    assert "to_label.labels.jsonl:1: a ranking of prompt 'z', which" in capsys.readouterr().err
