"""Opens the api's live run view in headless Chromium during a fan-out run and checks it.

Driven by tests/tests/e2e/live_view.rs (which starts the system and the run). Exits 0 when:
  - the page asks for a key, takes it, and lists the namespace's runs with this run;
  - the run page draws the graph, and the count of states done rises at least twice while
    the run is live (server-sent events and redraws), until the run has ended;
  - the fan-out node's box shows every state of the fan-out, collapsed into one box;
  - clicking the box lists its states, and clicking a state shows its inputs and outputs.
Saves a screenshot taken mid-run to --screenshot. Prints what it saw; on failure, why.

Usage: live_view.py --url URL --key KEY --ns NS --run RUN_ID --width N --screenshot PNG
"""

import argparse
import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    for a in ("--url", "--key", "--ns", "--run", "--screenshot"):
        p.add_argument(a, required=True)
    p.add_argument("--width", type=int, required=True)
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.status} {r.url}"))
        page.goto(f"{args.url}/ui/#/ns/{args.ns}")
        page.wait_for_selector('[data-testid="need-key"]', timeout=10_000)
        page.fill("#key", args.key)
        page.click("#keyform button")
        page.wait_for_selector(f'tr[data-run="{args.run}"]', timeout=10_000)
        print("runs list shows the run")
        page.click(f'tr[data-run="{args.run}"] a')
        page.wait_for_selector('[data-testid="graph"]', timeout=10_000)
        seen, shot = [], False
        deadline = time.time() + 120
        while time.time() < deadline:
            status = page.inner_text('[data-testid="run-status"]')
            done = int(page.inner_text('[data-testid="count-success"]'))
            if not seen or seen[-1] != done:
                seen.append(done)
            if status == "PENDING" and done > 0 and not shot:
                page.screenshot(path=args.screenshot, full_page=True)
                shot = True
            if status != "PENDING":
                break
            time.sleep(0.2)
        else:
            fail(f"the run did not end on the page; counts seen {seen}")
        print(f"run {status}; states done as the page showed them: {seen}")
        if len(seen) < 3:
            fail(f"the count of states done changed fewer than twice while live: {seen}")
        if not shot:
            fail("no screenshot mid-run (the run ended before the page showed progress)")
        # The redraw after the last event can trail the status by one tick.
        page.wait_for_function(
            f"document.querySelector('[data-testid=\"box-work\"]')?.dataset.total == '{args.width}'",
            timeout=10_000,
        )
        box = page.locator('[data-testid="box-work"]')
        counts = page.text_content('[data-testid="counts-work"]')
        print(f"work box: {box.get_attribute('data-total')} states, {counts}")
        box.click()
        page.wait_for_selector("#details .states div", timeout=10_000)
        page.locator("#details .states div").first.click()
        page.wait_for_selector("#state-detail pre", timeout=10_000)
        detail = page.inner_text("#state-detail")
        if not page.locator("svg .edge.unites").count():
            fail("the unite is not drawn")
        done = page.get_attribute('[data-testid="box-done"]', "data-total")
        if done != "1":
            fail(f"the unite box shows {done} states, not one")
        if "inputs" not in detail or "item-" not in detail:
            fail(f"state details without its inputs: {detail[:300]}")
        print("state details: inputs and outputs shown")
        if errors:
            fail(f"errors in the page: {errors}")
        browser.close()
    print("ok")


if __name__ == "__main__":
    main()
