"""Opens the api's live run view in headless Chromium during a fan-out run and checks it.

Driven by tests/tests/e2e/live_view.rs (which starts the system and the run). Exits 0 when:
  - the page asks for a key, takes it, and lists the namespace's runs with this run;
  - the run page draws the graph, and the count of states done rises at least twice while
    the run is live (server-sent events and redraws), until the run has ended;
  - the fan-out node's box shows every state of the fan-out, collapsed into one box;
  - clicking the box lists its states a page at a time ("more" loads the next) and by status
    (the ERRORED filter lists as many as the box counts), and clicking a state shows its
    inputs and outputs.
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


def until(check, what, timeout=10.0):
    """Polls `check` (Python reading the page: the page's CSP forbids the string evaluation
    Playwright's wait_for_function polls with) until it is true, or fails naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    fail(f"{what} (waited {timeout} s)")


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
        until(
            lambda: page.get_attribute('[data-testid="box-work"]', "data-total") == str(args.width),
            f"the work box never showed {args.width} states",
        )
        box = page.locator('[data-testid="box-work"]')
        counts = page.text_content('[data-testid="counts-work"]')
        print(f"work box: {box.get_attribute('data-total')} states, {counts}")
        box.click()
        page.wait_for_selector("#details .states div", timeout=10_000)
        # The node's states come a page (100) at a time: "more" loads the rest.
        lines = page.locator("#details .states div")
        first_page = lines.count()
        if args.width > 100:
            if first_page != 100:
                fail(f"the first page lists {first_page} states, not 100")
            page.click("#details button:has-text('more')")
            until(lambda: lines.count() == args.width, f"'more' did not list all {args.width} states")
            print(f"state list: {first_page} then {lines.count()} after 'more'")
        # Filtered by status: only ERRORED states, as many as the box counts.
        errored = int(box.get_attribute("data-errored"))
        page.select_option('[data-testid="status-filter"]', "ERRORED")

        def only_errored():
            shown = lines.all_text_contents()
            return shown and all(t.startswith("ERRORED") for t in shown)

        until(only_errored, "the ERRORED filter did not list only ERRORED states")
        if errored < 1 or lines.count() != errored:
            fail(f"the ERRORED filter lists {lines.count()} states, the box counts {errored}")
        print(f"ERRORED filter: {errored} states")
        page.locator("#details .states div").first.click()
        page.wait_for_selector("#state-detail pre", timeout=10_000)
        detail = page.inner_text("#state-detail")
        if not page.locator("svg .edge.unites").count():
            fail("the unite is not drawn")
        done = page.get_attribute('[data-testid="box-done"]', "data-total")
        if done != "1":
            fail(f"the unite box shows {done} states, not one")
        if "attempt 1" not in detail:
            fail(f"state details without the attempt: {detail[:300]}")
        if "inputs" not in detail or "item-" not in detail:
            fail(f"state details without its inputs: {detail[:300]}")
        print("state details: inputs and outputs shown")
        if errors:
            fail(f"errors in the page: {errors}")
        browser.close()
    print("ok")


if __name__ == "__main__":
    main()
