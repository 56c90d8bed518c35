"""`kiln serve --demo`, a minute in: every page has something to show.

Usage: demo_check.py BASE_URL USER PASSWORD OUT_DIR
Prints what it saw; exits non-zero on any failure or console error. Screenshots go to
OUT_DIR/demo-<page>.png.
"""
import sys

from playwright.sync_api import sync_playwright

from console_check import FLAGS

# Each page: the empty-state sentences it must not show, and words it must show.
PAGES = [
    ("overview", "/", ["No servers", "No release or rollback yet"], ["serving", "demo-worker v1", "Roll back to"]),
    ("servers", "/servers", ["No servers here yet"], ["running", "demo-worker v1"]),
    ("jobs", "/jobs", ["No jobs here"], ["succeeded", "failed", "repo"]),
    ("images", "/images", ["No images yet"], ["demo-worker", "current"]),
    ("rollouts", "/rollouts", ["No release or rollback yet"], ["release", "succeeded"]),
    ("bakes", "/bakes", ["No bake yet", "No recipe yet"], ["demo-worker", "succeeded"]),
    ("alerts", "/alerts", ["No rule yet"], ["checkout.slow", "app.checkout.latency"]),
    ("scaling", "/scaling", ["No decision yet"], ["Between 3 and 5 workers", "scale_out"]),
    ("audit", "/audit", ["No audit events"], ["demo", "job.enqueue", "rollout"]),
    ("audit-demo", "/audit?action=demo", ["No audit events"], ["demo.start", "kiln serve --demo"]),
    ("metrics", "/dashboards", [], ["Fleet"]),
]


def main() -> int:
    base, user, password, out = sys.argv[1:5]
    errors = []
    failures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.goto(f"{base}/login")
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")

        for name, path, absent, present in PAGES:
            page.goto(f"{base}{path}")
            if page.locator("#charts").count():
                page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
            text = page.locator("main").inner_text()
            for words in absent:
                if words in text:
                    failures.append(f"{path} says {words!r}")
            for words in present:
                if words not in text:
                    failures.append(f"{path} lacks {words!r}")
            wide = page.evaluate("document.documentElement.scrollWidth")
            if wide > 1280:
                failures.append(f"{path} is {wide}px wide on a 1280px screen")
            page.screenshot(path=f"{out}/demo-{name}.png", full_page=True)
            print(f"{path}: looked")

        # Graphs: the Overview's and the Metrics page's charts have lines, and the app
        # metric and the demo's markers are drawn.
        for path in ["/", "/dashboards"]:
            page.goto(f"{base}{path}")
            page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
            charts = page.locator("figure.chart")
            empty = page.locator("figure.chart .chart-empty:not([hidden])")
            drawn = charts.count() - empty.count()
            print(f"{path}: {drawn} of {charts.count()} charts have data")
            if charts.count() == 0 or empty.count() > 0:
                names = [empty.nth(i).locator("xpath=..").get_attribute("id") for i in range(empty.count())]
                failures.append(f"{path}: charts without data: {names}")
        page.goto(f"{base}/dashboards")
        page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
        frm = page.locator("#charts").get_attribute("data-from")
        to = page.locator("#charts").get_attribute("data-to")
        markers = page.evaluate(f"fetch('/dashboards/markers?from={frm}&to={to}').then(r => r.json())")
        kinds = sorted({m["kind"] for m in markers})
        print(f"markers: {[m['short'] for m in markers]}")
        for kind in ["annotation", "bake", "release"]:
            if kind not in kinds:
                failures.append(f"the Metrics page has no {kind} marker: {kinds}")
        if not any(m["kind"] == "annotation" and m["end"] for m in markers):
            failures.append("no annotation band")
        drawn = page.locator("#charts .uplot[data-marker-labels]").first.get_attribute("data-marker-labels")
        if int(drawn or 0) < 2:
            failures.append(f"{drawn} marker labels drawn")
        browser.close()

    for f in failures:
        print(f"FAIL: {f}")
    for e in errors:
        print(f"ERROR: {e}")
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
