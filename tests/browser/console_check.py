"""Drive Debian's Chromium through the real login form and the Users page.

Usage: console_check.py BASE_URL USER PASSWORD OUT_DIR
Prints what it saw; exits non-zero on any failure or browser console error.
"""
import sys

from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def main() -> int:
    base, user, password, out = sys.argv[1:5]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        # Every confirmation is accepted; its words are kept, to check it names its target.
        questions = []
        page.on("dialog", lambda d: (questions.append(d.message), d.accept()))

        page.goto(f"{base}/")
        assert page.url.startswith(f"{base}/login"), page.url
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        assert page.title() == "Overview · Kiln", page.title()
        assert page.locator("h1").inner_text() == "Overview"
        page.screenshot(path=f"{out}/overview.png", full_page=True)
        print("logged in, overview shown")

        page.goto(f"{base}/users")
        row = page.locator("tr", has_text="browser-victim")
        row.get_by_role("button", name="Disable browser-victim").click()
        page.locator("tr", has_text="browser-victim").get_by_text("disabled").wait_for()
        page.screenshot(path=f"{out}/users.png", full_page=True)
        print("disabled a user through htmx")

        page.goto(f"{base}/images")
        page.locator(".current-badge").first.wait_for()
        print("images page shows the current image")

        # Launch 3 servers from the form; the page refreshes itself (htmx) until they run.
        page.goto(f"{base}/servers")
        page.fill("#launch-count", "3")
        page.get_by_role("button", name="Launch servers").click()
        page.wait_for_url(f"{base}/servers")
        rows = page.locator("#servers-live tbody tr")
        page.locator("#servers-live tbody .state-running").nth(2).wait_for(timeout=30000)
        print("launched 3 servers; the page showed them running without a reload")

        # Disable the first, terminate the second (its confirmation is accepted).
        rows.nth(0).get_by_role("button", name="Disable").click()
        page.get_by_text("Disabled 1 server").wait_for()
        doomed = rows.nth(1).get_attribute("data-id")
        rows.nth(1).get_by_role("button", name="Terminate").click()
        page.get_by_text("Terminating 1 server once idle.").wait_for()
        assert questions[-1] == f"Terminate {doomed} once its running jobs finish?", questions
        try:
            page.locator("#servers-live .count .state-terminated + .num", has_text="1").wait_for(timeout=30000)
        except Exception:
            print(page.locator("#servers-live").evaluate("e => e.outerHTML")[:3000])
            raise
        page.screenshot(path=f"{out}/servers.png", full_page=True)
        print("disabled one server and terminated another from the browser")

        # Enqueue a job from the form; the running server's agent runs it.
        page.goto(f"{base}/jobs")
        page.click("#enqueue summary")
        page.fill("#job-command", "echo hello from the browser")
        page.fill("#job-labels", "repo=console")
        page.get_by_role("button", name="Enqueue").click()
        page.wait_for_url(f"{base}/jobs/*")
        page.locator("#job-state.state-succeeded").wait_for(timeout=30000)
        page.get_by_text("hello from the browser").last.wait_for()
        page.screenshot(path=f"{out}/job.png", full_page=True)
        page.goto(f"{base}/jobs")
        page.locator("#jobs-live .state-succeeded").first.wait_for()
        page.screenshot(path=f"{out}/jobs.png", full_page=True)
        print("enqueued a job from the form; it succeeded")

        # Add a new image, release it, and watch the rollout's page until it succeeds.
        page.goto(f"{base}/images")
        old = page.locator(".current-row").first.get_attribute("data-id")
        page.fill("#image-name", "worker")
        page.fill("#image-version", "2")
        page.get_by_role("button", name="Add image").click()
        page.get_by_role("button", name="Make current").first.wait_for(timeout=30000)
        new = page.locator("tr", has=page.get_by_role("button", name="Make current")).first.get_attribute("data-id")
        page.get_by_role("button", name="Make current").first.click()
        page.wait_for_url(f"{base}/rollouts/*")
        assert questions[-1].startswith(f"Release {new}? "), questions
        page.locator("#rollout-state.state-succeeded").wait_for(timeout=60000)
        page.screenshot(path=f"{out}/release.png", full_page=True)
        print("released a new image; its rollout succeeded on its page")

        # Roll back from the Images page: one click (confirmed), instant within the grace period.
        page.goto(f"{base}/images")
        page.locator("tr", has_text=old).get_by_role("button", name="Roll back to this").wait_for()
        page.screenshot(path=f"{out}/images.png", full_page=True)
        page.locator("tr", has_text=old).get_by_role("button", name="Roll back to this").click()
        page.wait_for_url(f"{base}/rollouts/*")
        assert questions[-1].startswith(f"Roll the fleet back to {old}? "), questions
        page.locator("#rollout-state.state-succeeded").wait_for(timeout=60000)
        page.screenshot(path=f"{out}/rollback.png", full_page=True)
        page.goto(f"{base}/rollouts")
        assert page.locator("#rollouts tbody tr").count() == 2
        page.screenshot(path=f"{out}/rollouts.png", full_page=True)
        print(f"rolled back to {old} from the Images page")

        # The Fleet dashboard: uPlot draws the console's own figures, with the release and
        # the rollback as markers.
        page.goto(f"{base}/dashboards")
        page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
        drawn = page.locator("figure.chart[data-drawn='lines']").count()
        assert drawn >= 3, f"only {drawn} charts drew lines"
        # The annotation posted before the run, the release and the rollback.
        marked = page.locator("figure.chart[data-markers='3']").count()
        assert marked >= 1, "no chart shows the annotation, release and rollback markers"
        assert page.locator("figure.chart canvas").count() >= 3
        page.screenshot(path=f"{out}/dashboards.png", full_page=True)
        print(f"dashboard: {drawn} charts with lines, markers drawn")

        # Build a dashboard of one stacked chart through the forms; it draws at once.
        page.fill("#new-dashboard-name", "Browser")
        page.get_by_role("button", name="Create dashboard").click()
        page.locator("h1", has_text="Browser").wait_for()
        page.fill("#chart-title", "Servers by state")
        page.fill("#chart-metric", "kiln.servers")
        page.select_option("#chart-aggregate", "max")
        page.check("input[name=stacked]")
        page.get_by_role("button", name="Add chart").click()
        page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
        stacked = page.locator("figure.chart[data-stacked='1'][data-drawn='lines']")
        assert stacked.count() == 1, "the new stacked chart drew no lines"
        page.screenshot(path=f"{out}/dashboard_custom.png", full_page=True)
        page.get_by_role("link", name="Edit").click()
        page.fill("#series-metric", "kiln.jobs.running")
        page.get_by_role("button", name="Add series").click()
        page.get_by_text("Added kiln.jobs.running to the chart.").wait_for()
        assert page.locator("#series tbody tr").count() == 2
        page.screenshot(path=f"{out}/dashboard_chart.png", full_page=True)
        print("built a dashboard with a stacked chart of two series")

        # A recipe from the Bakes page, baked with its button; the bake page follows it live.
        page.goto(f"{base}/bakes")
        page.fill("#recipe-name", "browser-worker")
        page.fill("#recipe-setup", "echo installing the toolchain")
        page.fill("#recipe-test", "echo all integration tests passed")
        page.get_by_role("button", name="Add recipe").click()
        page.get_by_text("Added the recipe browser-worker.").wait_for()
        page.get_by_role("button", name="Bake browser-worker").click()
        page.wait_for_url(f"{base}/bakes/*")
        page.locator("#bake-state.state-succeeded").wait_for(timeout=60000)
        page.get_by_text("all integration tests passed").wait_for()
        page.screenshot(path=f"{out}/bake.png", full_page=True)
        page.goto(f"{base}/bakes")
        page.screenshot(path=f"{out}/bakes.png", full_page=True)
        print("baked an image from the Bakes page")
        browser.close()
    for e in errors:
        print(e)
    print(f"console errors: {len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
