"""The portal's main flow in a real headless Chromium (Debian's ``/usr/bin/chromium`` driven by Python
Playwright; never a downloaded browser), against a live ``tempering serve`` with a worker, on the tiny Phi-3
registered under the Phi-3-mini catalog card (so "search phi-3 → Fine-tune" is real):

sign in → New project → catalog search "phi-3" filters live → upload a file with errors and see its lines →
Fine-tune wizard (name → task and an uploaded training file → automatic split → epochs → review with the
estimate) → Submit → the live chart fills and the job completes → Deploy → Playground answers → Delete the model
refused (names the deployment) → delete the deployment → Delete the model works.

A screenshot of every step is written under ``test-artefacts/portal/`` (or ``$TEMPERING_TEST_ARTEFACTS``).
Skipped when chromium or playwright is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import PHI3_ID, chat_example, worker_cores
from live_server import ADMIN_PASSWORD, live_server, register_model

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")]

GOOD = "".join(json.dumps(chat_example(f"What color is item {i}?", f"Item {i} is {['red', 'blue'][i % 2]}."))
               + "\n" for i in range(20))
BAD = GOOD + '{"messages": [{"role": "user", "content": "no answer"}]}\nnot json\n'


@pytest.fixture(scope="module")
def portal(tiny_phi3_dir, tmp_path_factory):
    """A live server (one worker) with the tiny Phi-3 registered as phi-3-mini-4k-instruct."""
    home = tmp_path_factory.mktemp("portal-home")
    register_model(home, PHI3_ID, tiny_phi3_dir)
    with live_server(home, secret=ADMIN_PASSWORD, timeout=90) as (url, password):
        assert password, "the server printed no admin password"
        yield url, password


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the browser tests (they are all in this module). Module-scoped, not
    session-scoped: Playwright's sync API holds a running event loop on the main thread while it is open, and
    later tests that call ``asyncio.run`` would fail."""
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


AXE = Path(__file__).parent / "vendor" / "axe.min.js"  # axe-core, vendored for tests (tests/vendor/README.md)
SERIOUS = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => v.id + " (" + v.impact + "): " + v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(", "));
}"""


@pytest.fixture
def shots():
    """``shots(page, name)``: a screenshot of the step, and axe-core's serious or critical violations on the page
    collected (``shots.violations``) for the test to check at its end."""
    folder = Path(os.environ.get("TEMPERING_TEST_ARTEFACTS", Path(__file__).parent.parent / "test-artefacts"))
    folder = folder / "portal"
    folder.mkdir(parents=True, exist_ok=True)
    count = iter(range(1, 100))

    def shot(page, name: str) -> None:
        page.screenshot(path=str(folder / f"{next(count):02d}-{name}.png"), full_page=True)
        page.add_script_tag(path=str(AXE))
        shot.violations += [f"{name}: {v}" for v in page.evaluate(SERIOUS)]

    shot.violations = []
    return shot


def test_the_main_flow_in_chromium(portal, browser, shots, tmp_path):
    expect = playwright_api.expect
    base, password = portal
    page = browser.new_page()
    page.set_default_timeout(30_000)
    requests_elsewhere = []
    rail = page.get_by_role("navigation", name="Main")
    page.on("request", lambda r: requests_elsewhere.append(r.url) if not r.url.startswith(base) else None)

    page.goto(base + "/")
    expect(page).to_have_url(re.compile(r"/signin"))
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    shots(page, "sign-in")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Model catalog")).to_be_visible()

    page.goto(base + "/projects")
    page.get_by_label("Project name").fill("Phi-3 demo")
    shots(page, "new-project")
    page.get_by_role("button", name="New project").click()
    expect(page.get_by_label("Project", exact=True)).to_have_value(re.compile(r"^proj"))
    expect(page.locator("#project-switch option:checked")).to_contain_text("Phi-3 demo")

    cards = page.locator("article.model-card")
    expect(cards.filter(has_text="SmolLM2")).to_have_count(1)
    page.get_by_label("Search models").fill("phi-3")  # filtered live (htmx), no submit
    expect(cards.filter(has_text="SmolLM2")).to_have_count(0)
    phi3 = cards.filter(has_text=PHI3_ID)
    expect(phi3).to_contain_text("present on this server")
    shots(page, "catalog-search")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD, encoding="utf-8")
    rail.get_by_role("link", name="Data files").click()
    page.get_by_label("Training data file (JSONL, CSV or TSV)").set_input_files(str(bad))
    page.get_by_role("button", name="Upload").click()
    problems = page.locator("table.problems tbody tr")
    expect(problems.first).to_be_visible()
    assert {problems.nth(i).locator("td").first.inner_text() for i in range(problems.count())} == {"21", "22"}
    shots(page, "data-problems")

    rail.get_by_role("link", name="Data files").click()  # a file dropped on the form, uploaded with progress
    dropped = page.evaluate_handle("""(text) => { const dt = new DataTransfer();
        dt.items.add(new File([text], "dropped.jsonl", {type: "application/json"})); return dt; }""", GOOD)
    page.locator("form[data-upload]").dispatch_event("drop", {"dataTransfer": dropped})
    expect(page.locator("[data-upload-status]")).to_have_text("dropped.jsonl")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("p.notice")).to_have_text("Uploaded dropped.jsonl: ready for fine-tuning.")
    expect(page).to_have_url(re.compile(r"/data/file-[^?]+\?uploaded=1$"))

    rail.get_by_role("link", name="Model catalog").click()
    page.get_by_label("Search models").fill("phi-3 mini 4k")
    cards.filter(has_text=PHI3_ID).get_by_role("link", name="Fine-tune").click()
    page.get_by_label("Model suffix").fill("web")
    shots(page, "wizard-name")
    page.get_by_role("button", name="Next").click()
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD, encoding="utf-8")
    page.get_by_label("Chat completion").check()
    page.get_by_label("Or upload a new file").set_input_files(str(good))
    shots(page, "wizard-data")
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Split automatically from the training data").check()
    page.get_by_label("Fraction held out for validation").fill("0.2")
    shots(page, "wizard-validation")
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Number of epochs").fill("2")
    shots(page, "wizard-hyperparameters")
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_text("Trained tokens")).to_be_visible()
    shots(page, "wizard-review")
    page.get_by_role("button", name="Submit").click()

    expect(page).to_have_url(re.compile(r"/jobs/ftjob-"))
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=180_000)
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-count", re.compile(r"^[1-9]"))
    expect(chart.locator("canvas")).to_have_count(1)
    shots(page, "job-completed")
    model = page.locator("#job-model").inner_text().strip()
    assert model.startswith(f"ft:{PHI3_ID}:web:")

    rail.get_by_role("link", name="Usage & cost").click()  # the ledger has the job's trained tokens
    # once it could be missing: read within the second the job ended, which the page's window left out
    expect(page.locator("tbody tr", has_text=f"{PHI3_ID}, training")).to_have_count(1)
    shots(page, "usage")
    page.go_back()
    page.reload()  # the checkpoints and the evaluation, as the finished job has them
    expect(page.get_by_role("heading", name="Evaluation: base vs fine-tuned")).to_be_visible()
    expect(page.locator("section[aria-labelledby=evaluation-title] tbody tr").first).to_contain_text("validation loss")
    page.get_by_role("button", name="Deploy checkpoint").first.click()  # an epoch's checkpoint, to compare with
    expect(page.get_by_role("status")).to_contain_text("Deployed")

    rail.get_by_role("link", name="Models", exact=True).click()
    row = page.locator("tr", has_text=model)
    row.get_by_label("Deployment name").fill("web-chat")
    row.get_by_label("Content filter").uncheck()
    shots(page, "deploy")
    row.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("status")).to_contain_text("Deployed")
    shots(page, "deployments")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(2)
    checkpoint_deployment = rows.filter(has_not_text="web-chat").locator("td").first.inner_text().split()[0]

    page.locator("tr", has_text="web-chat").get_by_role("link", name="Playground").click()
    page.get_by_label("Compare with (optional)").select_option(checkpoint_deployment)
    page.get_by_label("Your message").fill("What color is item 3?")
    page.get_by_role("button", name="Send").click()
    replies = page.get_by_test_id("reply")  # streamed in from /playground/stream, side by side
    expect(replies).to_have_count(2)
    for i in range(2):
        expect(replies.nth(i)).to_have_attribute("aria-busy", "false", timeout=120_000)
        assert replies.nth(i).inner_text().strip()
    shots(page, "playground")

    rail.get_by_role("link", name="Models", exact=True).click()
    page.locator("tr", has_text=model).get_by_role("button", name="Delete").click()
    refusal = page.get_by_role("alert")
    expect(refusal).to_contain_text("web-chat")  # refused while deployed, naming every deployment
    expect(refusal).to_contain_text(checkpoint_deployment)
    shots(page, "delete-refused")
    for name in ("web-chat", checkpoint_deployment):
        rail.get_by_role("link", name="Deployments").click()
        page.locator("tr", has_text=name).get_by_role("button", name="Delete").click()
        expect(page.get_by_role("status")).to_contain_text(f"Deleted the deployment {name}")
    rail.get_by_role("link", name="Models", exact=True).click()
    page.locator("tr", has_text=model).get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text(f"Deleted {model}")
    expect(page.locator("tr", has_text=model)).to_have_count(0)
    shots(page, "deleted")

    page.goto(base + "/projects")  # the administrators' pages, axe-checked too
    page.get_by_role("link", name="Hub settings: content safety, quotas, prices, secrets").first.click()
    expect(page.get_by_role("heading", name="Default content filter policy")).to_be_visible()
    shots(page, "hub-settings")
    for path, heading in (("/users", "Users"), ("/categories", "Content categories"), ("/blocklists", "Blocklists"),
                          ("/account", "Your account")):
        page.goto(base + path)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        shots(page, path.strip("/"))
    assert requests_elsewhere == []  # nothing phones home
    assert shots.violations == []  # axe-core: no serious or critical accessibility violation on any step
    page.close()


@pytest.fixture(scope="module")
def embedded_portal(tmp_path_factory):
    """A live server (one worker) in a fresh home: the catalog's embedded default is the model to tune."""
    home = tmp_path_factory.mktemp("portal-embedded-home")
    env = {"TEMPERING_WORKER_LEASE_SECONDS": "30",
           "OMP_NUM_THREADS": str(worker_cores())}  # a real model: every core it may use
    with live_server(home, env=env, secret=ADMIN_PASSWORD, timeout=90) as (url, password):
        assert password, "the server printed no admin password"
        yield url, password


def test_the_main_flow_on_the_embedded_model(embedded_portal, browser, tmp_path):
    """The same flow on SmolLM2-135M-Instruct, the embedded default: search → Fine-tune → wizard → Submit →
    Completed → Deploy → the playground answers in words → Delete."""
    expect = playwright_api.expect
    base, password = embedded_portal
    page = browser.new_page()
    page.set_default_timeout(30_000)
    rail = page.get_by_role("navigation", name="Main")
    page.goto(base + "/signin")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    cards = page.locator("article.model-card")
    page.get_by_label("Search models").fill("smollm2")
    cards.filter(has_text="smollm2-135m-instruct").get_by_role("link", name="Fine-tune").click()
    page.get_by_label("Model suffix").fill("e2e")
    page.get_by_role("button", name="Next").click()
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD, encoding="utf-8")
    page.get_by_label("Chat completion").check()
    page.get_by_label("Or upload a new file").set_input_files(str(good))
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Split automatically from the training data").check()
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Number of epochs").fill("1")
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_text("Trained tokens")).to_be_visible()
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=600_000)
    model = page.locator("#job-model").inner_text().strip()
    assert model.startswith("ft:smollm2-135m-instruct:e2e:")

    rail.get_by_role("link", name="Models", exact=True).click()
    row = page.locator("tr", has_text=model)
    row.get_by_label("Deployment name").fill("smol")
    row.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("status")).to_contain_text("Deployed")
    page.locator("tr", has_text="smol").get_by_role("link", name="Playground").click()
    page.get_by_label("Your message").fill("What color is item 3?")
    page.get_by_role("button", name="Send").click()
    reply = page.get_by_test_id("reply").first
    expect(reply).to_have_attribute("aria-busy", "false", timeout=180_000)
    assert re.search(r"[A-Za-z]{2,}", reply.inner_text())  # a real model answers in words

    rail.get_by_role("link", name="Deployments").click()
    page.locator("tr", has_text="smol").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("Deleted the deployment smol")
    rail.get_by_role("link", name="Models", exact=True).click()
    page.locator("tr", has_text=model).get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text(f"Deleted {model}")
    page.close()
