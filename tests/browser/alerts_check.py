"""Drive Debian's Chromium through the Alerts page: write a rule, read its preview, save it,
watch it fire, find its marker on the rule's chart, silence it.

Usage: alerts_check.py BASE_URL USER PASSWORD OUT_DIR [PREVIEWED_FILE]
PREVIEWED_FILE, when given, is created once the preview has been read: the test starts the
hot readings only then, so the preview sees the history alone however slowly Chromium starts.
Prints what it saw; exits non-zero on any failure or browser console error.
"""
import sys
import time

from playwright.sync_api import sync_playwright

from console_check import FLAGS


def main() -> int:
    base, user, password, out = sys.argv[1:5]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: d.accept())

        page.goto(f"{base}/login")
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")

        page.goto(f"{base}/alerts")
        form = page.locator("#new-rule form")
        form.locator("#rule-name").fill("temp.high")
        form.locator("#rule-description").fill("The oven runs hot")
        row = form.locator("table.condition-rows tbody tr").first
        row.locator("input[name=metric]").fill("app.temp")
        row.locator("input[name=source]").fill("t-*")
        row.locator("input[name=window_s]").fill("10")
        row.locator("select[name=op]").select_option("above")
        row.locator("input[name=threshold]").fill("80")
        row.locator("input[name=clear_threshold]").fill("70")
        form.get_by_role("button", name="Preview the last 24 hours").click()
        preview = page.locator("#preview")
        preview.get_by_text("Would have fired").wait_for(timeout=10000)
        print("preview:", preview.inner_text().splitlines()[0])
        if len(sys.argv) > 5:
            open(sys.argv[5], "w").close()
        form.get_by_role("button", name="Add rule").click()
        page.wait_for_url(f"{base}/alerts/*")
        rule_url = page.url
        print("rule saved at", rule_url)

        deadline = time.time() + 40
        while "firing" not in page.locator("#sources").inner_text() if page.locator("#sources").count() else True:
            assert time.time() < deadline, "the rule did not fire"
            time.sleep(1)
            page.reload()
        print("the rule fires on t-1")
        page.locator("#charts[data-ready='1']").wait_for(timeout=20000)
        marked = page.locator("figure.chart").get_attribute("data-markers")
        assert marked is not None and int(marked) >= 1, f"no marker on the rule's chart ({marked})"
        page.locator("#alert-badge .alert-count").wait_for(timeout=10000)
        print("badge:", page.locator("#alert-badge").inner_text())
        page.screenshot(path=f"{out}/alert.png", full_page=True)

        page.get_by_role("button", name="Silence 1 h").click()
        page.wait_for_url(rule_url)
        page.get_by_text("Silenced until").wait_for()
        page.goto(f"{base}/alerts")
        page.locator("#firing").get_by_text("firing (silenced)").wait_for()
        page.screenshot(path=f"{out}/alerts.png", full_page=True)
        print("silenced from the rule's page")
        browser.close()
    print(f"console errors: {len(errors)}")
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
