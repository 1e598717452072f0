"""The console in a real headless Chromium against a real ``tunery serve``: a person's path through it.

Sign in, upload a bad file (its problems by line, each linking to the line) and a good one (its statistics),
create a job on the tiny model (the server's field violations next to their fields first), watch its curves
gain points while it runs and resume after a reload from ``Last-Event-ID``, read SUCCEEDED and the evaluation,
use the playground, cancel a second job; a second tenant sees none of it; a hostile dataset renders as text;
axe-core finds no serious or critical violation on any page. The tests run in order on one server.

    .venv/bin/python -m pytest tests/browser -x -q
"""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_tab import PHONE, Tab

from tunery.api.console import ASSETS

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
JOB: dict[str, Any] = {}  # what the earlier tests made, for the later ones


def expect(page: Any, selector: str, text: str | None = None, timeout: float = 20_000) -> Any:
    locator = page.locator(selector).first
    locator.wait_for(timeout=timeout)
    if text is not None:
        page.wait_for_function(
            "([s, t]) => document.querySelector(s) && document.querySelector(s).textContent.includes(t)",
            arg=[selector, text],
            timeout=timeout,
        )
    return locator


def upload(page: Any, path: Path, model: str = "tiny") -> None:
    page.get_by_label("JSONL dataset").set_input_files(str(path))
    page.get_by_label("Count tokens with model").fill(model)
    page.get_by_role("button", name="Upload and check").click()


# --- the static page and its security ----------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []
        self._in_script = False
        self.inline = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline += data.strip()


def test_the_page_is_open_its_data_is_not_and_its_policy_allows_no_inline_script(server) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    tags = _Tags()
    tags.feed(page.text)
    assert tags.scripts and all(s.get("src") for s in tags.scripts) and not tags.inline and not tags.handlers
    for asset in ("app.js", "style.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"):
        response = httpx.get(f"{server.url}/console/{asset}")
        assert response.status_code == 200 and response.headers["content-security-policy"], asset
    for path in ("/console/../routes/console.py", "/console/__init__.py", "/console/%2e%2e/app.py", "/console/nope.js"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code in (401, 404) and "import" not in response.text, path  # nothing else is served
    for path in ("/v1/files", "/v1/tuningJobs", "/v1/models", "/v1/console/tuningJobs/x"):
        assert httpx.get(f"{server.url}{path}").status_code == 401, path  # every data call needs a key
    source = (ASSETS / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, sink  # user strings reach the page as text only


def test_sign_in_refuses_a_wrong_key_and_keeps_the_key_out_of_urls_and_cookies(tab: Tab, browser_context) -> None:
    page = tab.open()
    page.keyboard.type("tk_not-a-key")  # the key field has the focus; Enter sends the form
    page.keyboard.press("Enter")
    expect(page, "#signin-error", "refused")
    assert page.evaluate("() => document.activeElement.id") == "api-key"
    tab.axe("sign-in")
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    tab.sign_in("acme", remember=True)
    expect(page, "h1", "Jobs")
    page.reload()  # the tab kept the key in its session storage
    page.get_by_role("navigation", name="Console").wait_for()
    key = tab.server.keys["acme"]
    assert urls and not any(key in url for url in urls)
    assert browser_context.cookies() == []
    assert key not in page.evaluate("() => document.body.innerText")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key").wait_for()
    assert page.evaluate("() => Object.keys(sessionStorage).filter(k => k.startsWith('tunery.'))") == []
    tab.assert_clean()


# --- datasets -----------------------------------------------------------------------------------------------


def test_a_bad_upload_shows_every_problem_by_line_linking_to_the_line(tab: Tab, data_files: Path) -> None:
    page = tab.sign_in()
    tab.go("#/datasets")
    upload(page, data_files / "mixed.jsonl")
    expect(page, "#problems", "the file was not kept")
    rows = page.locator("#problems tbody tr")
    lines = [int(t.removeprefix("line ")) for t in page.locator("#problems .line-link").all_inner_texts()]
    assert rows.count() >= 5 and len(set(lines)) >= 5, page.locator("#problems").inner_text()
    assert float(page.locator("#upload-progress").get_attribute("value") or 0) == 100
    source = (data_files / "mixed.jsonl").read_text().splitlines()
    link = page.locator("#problems .line-link").nth(1)
    n = int(link.inner_text().removeprefix("line "))
    link.press("Enter")  # by keyboard
    expect(page, "#line-view h3", f"Line {n}")
    assert page.locator("#line-view .line-content").inner_text() == source[n - 1]
    assert page.evaluate("() => document.activeElement.id") == "line-view"
    tab.axe("datasets, problems")
    tab.assert_clean()


def test_a_good_upload_shows_its_statistics(tab: Tab, data_files: Path) -> None:
    page = tab.sign_in()
    tab.go("#/datasets")
    upload(page, data_files / "tickets.jsonl")
    expect(page, "#upload-result .success", "10 examples")
    stats = expect(page, "#file-stats", "Examples")
    text = stats.inner_text()
    assert re.search(r"Examples\s+10\b", text) and "Billable tokens" in text and "Truncated examples" in text
    histograms = page.locator("#file-stats .dist")
    assert histograms.count() == 2
    for i in range(2):  # input and output tokens: every example in one bucket
        counts = [int(t.replace(",", "")) for t in histograms.nth(i).locator(".hist .num").all_inner_texts()]
        assert len(counts) >= 1 and sum(counts) == 10, counts
    files = tab.server.client.get("/v1/files", headers=tab.server.headers(tab.server.keys["acme"])).json()["files"]
    assert [f["displayName"] for f in files] == ["tickets.jsonl"]
    JOB["validation"] = files[0]["name"]
    assert files[0]["supervisedTuningDataStats"]["totalBillableTokenCount"] > 0
    billable = f"{files[0]['supervisedTuningDataStats']['totalBillableTokenCount']:,}"
    assert billable in text
    tab.axe("datasets, statistics")
    tab.assert_clean()


# --- a job from the form to its evaluation -----------------------------------------------------------------


def fill_job(page: Any, train: str, validation: str = "", **hyper: str) -> None:
    page.get_by_label("Base model", exact=True).fill("tiny")
    page.get_by_label("Training dataset", exact=True).fill(train)
    page.get_by_label("Validation dataset (optional)").fill(validation)
    for name, value in hyper.items():
        page.locator(f"#hp-{name}").fill(value)


def test_a_job_from_the_form_streams_its_curves_succeeds_and_is_evaluated(tab: Tab) -> None:
    page = tab.sign_in(remember=True)  # the reload below stays signed in
    tab.go("#/new")
    page.get_by_label("Batch Size").wait_for()
    hint = page.locator("#hp-batchSize-hint").inner_text()
    assert "Default 8" in hint and "1 to 1024" in hint  # from the API schema
    assert page.locator("#hp-adapterSize").input_value() == ""  # auto: from the data's shape (issue #29)
    fill_job(page, "long.jsonl", JOB["validation"], epochCount="2", batchSize="0", learningRateMultiplier="20")
    page.get_by_label("Labels", exact=True).fill("Suite=console")
    page.get_by_label("Tuned model display name").fill("console tickets")
    page.get_by_role("button", name="Create job").click()
    expect(page, "#hp-batchSize-error", "greater than or equal to 1")
    assert page.locator("#hp-batchSize").get_attribute("aria-invalid") == "true"
    expect(page, "#labels-error")
    assert page.locator("#hp-epochCount").get_attribute("aria-invalid") is None
    tab.axe("new job, with the server's violations")

    page.locator("#hp-batchSize").fill("8")
    page.get_by_label("Labels", exact=True).fill("suite=console")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r"#/jobs/\w+$"))
    job_id = page.url.rsplit("/", 1)[1]
    JOB["id"] = job_id
    expect(page, "h1", "console tickets")

    # points appear while the job runs
    chart = page.locator("#loss-chart")
    page.wait_for_function(
        "() => document.querySelector('#job-state').textContent === 'RUNNING'"
        " && Number(document.querySelector('#loss-chart').dataset.points) >= 2",
        timeout=120_000,
    )
    first = int(chart.get_attribute("data-points") or 0)
    page.wait_for_function(
        "n => Number(document.querySelector('#loss-chart').dataset.points) > n", arg=first, timeout=60_000
    )
    seen = page.evaluate("() => document.querySelector('#job-state').textContent")
    assert seen in ("RUNNING", "SUCCEEDED")
    assert page.locator("#loss-chart canvas").count() == 1 and page.locator("#accuracy-chart canvas").count() == 1

    # a reload resumes from the last event it saw, keeping the points it had
    before = int(chart.get_attribute("data-points") or 0)
    resumed: list[str] = []
    page.on(
        "request",
        lambda r: resumed.append(r.headers.get("last-event-id", "")) if "alt=sse" in r.url else None,
    )
    page.reload()
    page.locator("#loss-chart canvas").wait_for()
    page.wait_for_function(lambda_points_at_least(before), timeout=30_000)
    assert resumed and resumed[0].isdigit() and int(resumed[0]) > 0, resumed

    expect(page, "#job-state", "SUCCEEDED", timeout=240_000)
    points = int(chart.get_attribute("data-points") or 0)
    events = tab.server.events(f"tuningJobs/{job_id}", tab.server.keys["acme"])
    steps = {e["data"]["step"] for e in events if e["type"] == "metrics"}
    assert points == len(steps)  # each step once, none lost or doubled across the reload
    text = page.locator("main").inner_text()
    assert "Hyperparameters as resolved" in text and re.search(r"batchSize\s+8", text) and "Learning rate" in text
    assert re.search(r"epochCount\s+2", text) and page.locator("#timeline li").count() >= 3
    assert page.locator("#cancel-job").is_disabled()
    tab.axe("job page, succeeded")
    tab.page.set_viewport_size(PHONE)
    tab.axe("job page, phone width")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"] + 1  # nothing off-screen

    page.get_by_role("link", name=re.compile("evaluation and playground")).click()
    expect(page, "#evaluation", "Per-class F1")
    assert page.locator("#confusion tbody tr").count() >= 2
    assert re.search(r"accuracy\s+\d+(\.\d)?%", page.locator("#evaluation").inner_text())
    JOB["model"] = job_id
    tab.page.set_viewport_size({"width": 1366, "height": 800})
    tab.axe("tuned model page")
    tab.assert_clean()


def lambda_points_at_least(n: int) -> str:
    return f"() => Number((document.querySelector('#loss-chart') || {{dataset: {{}}}}).dataset.points) >= {n}"


def play(tab: Tab, baseline: str | None) -> Any:
    """Send one message to both sides of the playground; ``baseline`` picks the model the left side asks."""
    page = tab.sign_in()
    tab.go(f"#/models/{JOB['model']}")
    expect(page, "#playground")
    if baseline:
        page.get_by_label("Model to compare with").select_option(baseline)
    page.get_by_label("Message (the user's turn)").fill("my card never arrived")
    page.get_by_label("Max output tokens").fill("4")
    page.get_by_role("button", name="Send to both").click()
    for side in ("#pg-tuned-answer", "#pg-base-answer"):
        expect(page, side, "Prompt tokens", timeout=300_000)
        text = page.locator(side).inner_text()
        assert re.search(r"Prompt tokens\s+\d+", text) and re.search(r"Latency\s+\d+ ms", text), text
        assert re.search(r"\$\d+\.\d{4}", text), text
    tuned, base = (prompt_tokens(page.locator(side).inner_text()) for side in ("#pg-tuned-answer", "#pg-base-answer"))
    assert base > tuned  # the best prompt is the long one
    return page


def test_the_playground_answers_side_by_side_with_tokens_latency_and_cost(tab: Tab) -> None:
    # The tiny base model is a directory, which generateContent does not serve; a second tuned model stands in
    # for the baseline here (the integration test below asks the real catalog model).
    key = tab.server.headers(tab.server.keys["acme"])
    body = {
        "baseModel": "tiny",
        "tunedModelDisplayName": "baseline",
        "supervisedTuningSpec": {"trainingDatasetUri": "classify_gemini.jsonl", "hyperParameters": {"epochCount": 1}},
    }
    baseline = tab.server.client.post("/v1/tuningJobs", headers=key, json=body).json()["name"]
    tab.server.wait_job(baseline, tab.server.keys["acme"])
    JOB["baseline"] = baseline.split("/")[1]
    page = play(tab, baseline.split("/")[1])
    snippets = page.locator("#snippets").inner_text()
    for name in ("curl", "Python SDK", "google-genai", "openai", f"models/{JOB['model']}"):
        assert name in snippets
    assert tab.server.keys["acme"] not in snippets
    tab.axe("tuned model page, playground answered")
    tab.assert_clean()


@pytest.mark.integration
def test_the_playground_asks_the_real_base_model_with_its_best_prompt(tab: Tab) -> None:
    play(tab, "smollm2-135m-instruct")  # loads the shipped model in the model host
    tab.assert_clean()


def prompt_tokens(text: str) -> int:
    found = re.search(r"Prompt tokens\s+([\d,]+)", text)
    assert found, text
    return int(found[1].replace(",", ""))


def test_a_second_job_is_cancelled_from_its_page(tab: Tab) -> None:
    page = tab.sign_in()
    tab.go("#/new")
    fill_job(page, "long.jsonl", epochCount="20")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r"#/jobs/\w+$"))
    JOB["cancelled"] = page.url.rsplit("/", 1)[1]
    expect(page, "#job-state", "RUNNING", timeout=120_000)
    page.get_by_role("button", name="Cancel job").click()
    expect(page, "#job-state", "CANCELLED", timeout=120_000)
    expect(page, "#job-error")  # why it ended
    tab.go("#/jobs")
    expect(page, "table", "CANCELLED")
    page.get_by_label("State").select_option("JOB_STATE_CANCELLED")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_function("() => document.querySelectorAll('main tbody tr').length === 1")
    page.get_by_label("State").select_option("")
    page.get_by_label("Label (key:value)").fill("suite:console")
    page.get_by_role("button", name="Filter").click()
    expect(page, "main tbody tr", "console tickets")
    assert page.locator("main tbody tr").count() == 1
    tab.axe("jobs list")
    tab.assert_clean()


# --- tenants and hostile input -------------------------------------------------------------------------------


def test_another_tenant_sees_none_of_it(tab: Tab) -> None:
    page = tab.sign_in("rival")
    expect(page, "main", "No jobs here")
    tab.go("#/datasets")
    expect(page, "main", "No files yet")
    tab.go("#/models")
    expect(page, "main", "None yet")
    for hash_ in (f"#/jobs/{JOB['id']}", f"#/models/{JOB['model']}"):
        tab.go(hash_)
        expect(page, "main .alert", "not found")
    body = page.evaluate("() => document.body.innerText")
    assert "console tickets" not in body and "tickets.jsonl" not in body
    tab.assert_clean()


def test_a_hostile_dataset_and_display_name_render_as_text(tab: Tab, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.jsonl"
    row = {
        "contents": [
            {"role": "user", "parts": [{"text": f"hello {XSS}"}]},
            {"role": "model", "parts": [{"text": "card_arrival"}]},
        ]
    }
    hostile.write_text(json.dumps(row) + "\n" + XSS + "\n")
    page = tab.sign_in()
    tab.go("#/datasets")
    upload(page, hostile)
    expect(page, "#problems .line-link")
    page.locator("#problems .line-link").first.click()
    expect(page, "#line-view .line-content", "<script>")
    assert page.locator("#line-view .line-content").inner_text() == XSS
    key = tab.server.headers(tab.server.keys["acme"])
    created = tab.server.client.post(
        "/v1/tuningJobs",
        headers=key,
        json={"supervisedTuningSpec": {"trainingDatasetUri": "nothing.jsonl"}, "tunedModelDisplayName": XSS},
    )
    assert created.status_code == 400  # not a file: the page still shows the server's message as text
    job = tab.server.client.post(
        "/v1/tuningJobs",
        headers=key,
        json={
            "baseModel": "tiny",
            "supervisedTuningSpec": {"trainingDatasetUri": "long.jsonl"},
            "tunedModelDisplayName": XSS,
        },
    ).json()
    tab.server.client.post(f"/v1/{job['name']}:cancel", headers=key)
    tab.go("#/jobs")
    expect(page, "main tbody", "<script>")
    tab.go(f"#/jobs/{job['name'].split('/')[1]}")
    expect(page, "h1", "<img")
    assert page.locator("h1").inner_text() == XSS
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("main img, main script").count() == 0
    tab.assert_clean()


def test_a_compare_report_opens_in_a_sandbox_where_its_scripts_do_not_run(tab: Tab, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(
        "<!doctype html><html><head><style>h1{color:rgb(1, 2, 3)}</style></head><body><h1>tunery comparison</h1>"
        '<img alt="plot" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk'
        '+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="><script>parent.window.__report = 1; window.__ran = 1</script>'
        "</body></html>"
    )
    page = tab.sign_in()
    tab.go("#/reports")
    page.get_by_label("A report.html").set_input_files(str(report))
    frame_el = expect(page, "iframe.report")
    assert frame_el.get_attribute("sandbox") == ""
    frame = page.frame_locator("iframe.report")
    frame.locator("h1").wait_for()
    assert frame.locator("h1").inner_text() == "tunery comparison"
    assert frame.locator("h1").evaluate("e => getComputedStyle(e).color") == "rgb(1, 2, 3)"  # its own style
    assert frame.locator("img").evaluate("e => e.complete && e.naturalWidth") == 1  # its inline plots
    assert page.evaluate("() => window.__report") is None
    tab.axe("reports")
    tab.errors[:] = [e for e in tab.errors if "Blocked script execution" not in e]  # the sandbox at work
    tab.assert_clean()


def test_every_page_fits_a_phone_and_passes_axe(tab: Tab) -> None:
    page = tab.sign_in()
    page.set_viewport_size(PHONE)
    for hash_ in ("#/datasets", "#/new", "#/jobs", "#/models", f"#/models/{JOB['model']}", "#/reports"):
        tab.go(hash_)
        page.locator("main h1").first.wait_for()
        time.sleep(0.3)
        tab.axe(f"{hash_} at phone width")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"{hash_} is {width} px wide on a {PHONE['width']} px phone"
    tab.assert_clean()


def test_a_tuned_model_is_deleted_from_its_page(tab: Tab) -> None:
    page = tab.sign_in()
    tab.go(f"#/models/{JOB['baseline']}")
    page.get_by_role("button", name="Delete model").click()  # the confirm dialog is accepted
    page.wait_for_url(re.compile(r"#/models$"))
    expect(page, "main", "Tuned models")
    key = tab.server.headers(tab.server.keys["acme"])
    assert tab.server.client.get(f"/v1/models/{JOB['baseline']}", headers=key).status_code == 404
    assert page.get_by_role("link", name="baseline").count() == 0
    assert page.get_by_role("link", name="console tickets").count() == 1
    tab.assert_clean()
