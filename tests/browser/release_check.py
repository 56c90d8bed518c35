"""Drive Debian's Chromium through a guarded release: the release dialog with a plan (a
canary, its soak time, a go-ahead after it), the rollout page waiting for the go-ahead with
the canary comparison, Continue, and the release done.

Usage: release_check.py BASE_URL USER PASSWORD OUT_DIR IMAGE_ID
Prints what it saw; exits non-zero on any failure or browser console error.
"""
import sys

from playwright.sync_api import sync_playwright

from console_check import FLAGS


def main() -> int:
    base, user, password, out, image = sys.argv[1:6]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: (print("asked:", d.message), d.accept()))

        page.goto(f"{base}/login")
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")

        page.goto(f"{base}/images/{image}")
        plan = page.locator("#release-plan")
        if plan.get_attribute("open") is None:
            plan.locator("summary").click()
        page.locator("#p-canary").fill("1")
        page.locator("#p-soak").fill("1")
        page.locator("#p-approval").select_option("after_canary")
        page.locator("#p-deadline").fill("600")
        page.locator("#p-insufficient").select_option("wait")
        page.locator("#release-panel").screenshot(path=f"{out}/release-dialog.png")
        page.get_by_role("button", name="Make current").click()
        page.wait_for_url(f"{base}/rollouts/*")
        print("plan:", page.locator("#rollout-plan").inner_text())

        # The canary soaks, then waits for a human: the page refreshes itself until it does.
        go = page.locator("#go-ahead")
        go.wait_for(timeout=60000)
        print("waiting:", go.inner_text().splitlines()[0])
        page.reload()
        comparison = page.locator("#comparison")
        comparison.wait_for()
        print("comparison:", comparison.locator("p").last.inner_text())
        page.screenshot(path=f"{out}/release-awaiting-approval.png", full_page=True)

        page.locator("#go-ahead").get_by_role("button", name="Continue").click()
        page.get_by_text("continues: the next batch starts").wait_for()
        page.locator("#rollout-state", has_text="succeeded").wait_for(timeout=60000)
        print("state:", page.locator("#rollout-state").inner_text())
        page.screenshot(path=f"{out}/release-done.png", full_page=True)

        page.goto(f"{base}/")
        print("overview waiting banner:", page.locator("#waiting-release").count())
        browser.close()
    print(f"console errors: {len(errors)}")
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
