"""Drive Debian's Chromium across two consoles on one database: log in on A, then use B
with the same browser (the session cookie is the host's, both consoles listen on 127.0.0.1):
B shows the Rollouts page as the logged-in user and takes its freeze form; A shows the
freeze B recorded; logging out on B ends the session on A too.

Usage: two_consoles_check.py BASE_A USER PASSWORD OUT_DIR BASE_B
Prints what it saw; exits non-zero on any failure or browser console error.
"""
import sys

from playwright.sync_api import sync_playwright

from console_check import FLAGS


def main() -> int:
    a, user, password, out, b = sys.argv[1:6]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))

        page.goto(f"{a}/login")
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{a}/")
        print("logged in on A:", a)

        page.goto(f"{b}/rollouts")
        if "/login" in page.url:
            print("B sent the browser to its login page: the session did not carry over")
            return 1
        page.fill("#fz-reason", "added on B by a session made on A")
        page.fill("#fz-from", "2031-01-01 00:00")
        page.get_by_role("button", name="Add freeze").click()
        page.locator("#freezes", has_text="added on B by a session made on A").wait_for()
        print("B recorded the freeze:", page.url)
        page.screenshot(path=f"{out}/two-consoles-b.png", full_page=True)

        page.goto(f"{a}/rollouts")
        page.locator("#freezes", has_text="added on B by a session made on A").wait_for()
        print("A shows it")

        page.goto(f"{b}/")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{b}/login*")
        page.goto(f"{a}/rollouts")
        if "/login" not in page.url:
            print("A still serves the session B logged out")
            return 1
        print("logged out on B: A asks for a login again")
        browser.close()
    if errors:
        print("\n".join(errors))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
