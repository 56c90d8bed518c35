"""The console at 3 a.m.: what an operator under stress needs, on a desktop and on a phone.

Usage: operator_check.py BASE_URL USER PASSWORD OUT_DIR OLD_IMAGE OLD_LABEL NEW_IMAGE RELEASE_ID
The fleet has just been released to NEW_IMAGE (release RELEASE_ID); five jobs failed, three
labelled suite=flaky. Prints what it saw; exits non-zero on any failure or console error.
"""
import sys
import time
from datetime import datetime, timedelta

from playwright.sync_api import sync_playwright

from console_check import FLAGS

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def fits(page, what):
    """The page is never wider than the screen (nothing scrolls sideways but a table)."""
    wide = page.evaluate("document.documentElement.scrollWidth")
    inner = page.evaluate("window.innerWidth")
    if wide > inner:
        # Name the widest offenders, to say what to fix.
        culprits = page.evaluate("""w => Array.from(document.querySelectorAll('body *'))
            .filter(e => e.getBoundingClientRect().right > w + 1)
            .slice(0, 8)
            .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""", inner)
        raise AssertionError(f"{what} is {wide}px wide on a {inner}px screen: {culprits}")


def main() -> int:
    base, user, password, out, old, old_label, new, release = sys.argv[1:9]
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        # The viewer is in India (UTC+5:30): absolute times are shown in their zone.
        page = browser.new_page(viewport=DESKTOP, timezone_id="Asia/Kolkata")
        page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        questions = []
        page.on("dialog", lambda d: (questions.append(d.message), d.accept()))

        page.goto(f"{base}/login")
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")

        # Counts that tell the truth: the release kept the old servers, disabled.
        line = page.locator("#fleet-line").inner_text()
        assert "2 serving" in line and "2 kept for rollback until" in line, line
        assert page.locator("#current-image").inner_text() == "worker v2", page.locator("#current-image").inner_text()
        until = page.locator("#fleet-line time")
        utc = datetime.strptime(until.get_attribute("title"), "%Y-%m-%d %H:%M:%S UTC")
        local = (utc + timedelta(hours=5, minutes=30)).strftime("%H:%M")
        assert until.inner_text().endswith(local), f"kept until {until.inner_text()}, not {local} in Kolkata"
        button = page.locator("#rollback-button")
        assert button.inner_text() == f"Roll back to {old_label}", button.inner_text()
        page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
        page.screenshot(path=f"{out}/overview-desktop.png", full_page=True)
        print(f"overview: {line}; the rollback button names {old_label}")

        # Servers: the kept rows say so; the chips follow the filter.
        page.goto(f"{base}/servers")
        assert page.locator("#server-table .kept").count() == 2
        page.locator(".counts a.count", has_text="disabled").click()
        page.wait_for_url("**/servers?mode=disabled")
        modes = page.locator("#server-table tbody tr .state-disabled").count()
        assert modes == 2, f"{modes} disabled rows under the disabled filter"
        running_chip = page.locator(".counts a.count", has_text="running").first.inner_text()
        assert running_chip.split()[-1] == "2", f"the running chip within the filter: {running_chip}"
        assert page.locator(".counts a.count.active", has_text="disabled").count() == 1
        page.goto(f"{base}/servers")
        page.screenshot(path=f"{out}/servers-desktop.png", full_page=True)
        print("servers: kept rows marked; chips follow the mode filter")

        # Names in legends and markers: the Metrics page.
        page.goto(f"{base}/dashboards")
        page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
        legend = page.locator("figure.chart", has_text="Servers by state and image").locator(".u-legend")
        deadline = time.time() + 30
        while "worker v2" not in legend.inner_text():
            assert time.time() < deadline, f"no image name in the legend: {legend.inner_text()}"
            page.reload()
            page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
            legend = page.locator("figure.chart", has_text="Servers by state and image").locator(".u-legend")
        labels = page.locator("#charts .uplot[data-marker-labels]").first.get_attribute("data-marker-labels")
        assert int(labels) >= 2, f"{labels} marker labels drawn"
        frm = page.locator("#charts").get_attribute("data-from")
        to = page.locator("#charts").get_attribute("data-to")
        markers = page.evaluate(f"fetch('/dashboards/markers?from={frm}&to={to}').then(r => r.json())")
        shorts = [m["short"] for m in markers]
        assert "▲ v2" in shorts, shorts
        band = [m for m in markers if m["kind"] == "annotation" and m["end"]]
        assert band, markers
        absent = page.locator(".chart-absent", has_text="EC2 calls").count()
        assert absent == 1, "the EC2 chart says it has no data under the local provider"
        page.screenshot(path=f"{out}/metrics-desktop.png", full_page=True)
        print(f"metrics: legend names worker v2; markers {shorts}; {labels} labels drawn")

        # Rollback where the operator is: the Overview's button, one confirmation.
        page.goto(f"{base}/")
        page.locator("#rollback-button").click()
        page.wait_for_url(f"{base}/rollouts/*")
        assert questions[-1].startswith(f"Roll the fleet back to {old_label} ({old})? "), questions
        page.locator("#rollout-state.state-succeeded").wait_for(timeout=60000)
        assert page.locator("#rollout-elapsed").inner_text().startswith("took "), page.locator("#rollout-elapsed").inner_text()
        rollback_url = page.url
        page.screenshot(path=f"{out}/rollout-desktop.png", full_page=True)
        print("rolled back from the Overview's button")

        # The release's page says it was undone, and by which rollback.
        page.goto(f"{base}/rollouts/{release}")
        undone = page.locator("#rollout-undone")
        assert "rolled back by" in undone.inner_text(), undone.inner_text()
        assert page.locator("#rollback-button").count() == 0, "no rollback offered for an undone release"
        undone.get_by_role("link").click()
        page.wait_for_url(rollback_url)
        print("the release says it was undone and links to the rollback")

        # The fled image: no red button; "rolled back at … by …" and a neutral Release again.
        page.goto(f"{base}/images")
        row = page.locator(f"tr[data-id='{new}']")
        assert row.locator("button.rollback").count() == 0, "the fled image offers a rollback"
        assert "rolled back at" in row.locator(".fled").inner_text(), row.inner_text()
        assert f"by {user}" in row.locator(".fled").inner_text(), row.inner_text()
        again = row.get_by_role("button", name="Release again")
        assert again.count() == 1
        page.screenshot(path=f"{out}/images-desktop.png", full_page=True)
        print("images: the fled image is marked and offers Release again")

        # An audit log you can search.
        page.goto(f"{base}/audit")
        everything = page.locator("table tbody tr").count()
        page.fill("#a-action", "rollout")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(lambda u: "/audit?action=rollout" in u)
        actions = page.locator("table tbody tr td:nth-child(3)").all_inner_texts()
        assert actions and all(a.startswith("rollout.") for a in actions), actions
        assert len(actions) < everything or everything == 50, (len(actions), everything)
        page.fill("#a-user", "nobody")
        page.get_by_role("button", name="Filter").click()
        page.get_by_text("No audit events match these filters").wait_for()
        print(f"audit: {everything} events; {len(actions)} rollout events under the filter")

        # Overview's activity folds routine events.
        page.goto(f"{base}/")
        folded = page.locator("tr.folded", has_text="jobs enqueued by")
        assert folded.count() == 1 and "4 jobs enqueued by" in folded.inner_text(), page.locator("table").last.inner_text()
        print(f"overview: routine events folded: {folded.inner_text()}")

        # Jobs to triage: Retry all failed, as filtered.
        page.goto(f"{base}/jobs?state=failed&label=suite%3Dflaky")
        assert page.locator("#job-table tbody tr").count() == 3
        chip = page.locator("#job-table a.label-chip").first
        assert chip.inner_text() == "suite=flaky"
        retry = page.locator("#retry-all")
        assert retry.inner_text() == "Retry all 3 failed (as filtered)", retry.inner_text()
        retry.click()
        page.get_by_text("3 failed jobs are queued for a new attempt.").wait_for()
        assert questions[-1] == "Retry 3 failed jobs labelled suite=flaky? Each is queued for a new attempt.", questions
        page.goto(f"{base}/jobs")
        assert page.locator("#job-table thead", has_text="Queued for").count() == 1
        page.screenshot(path=f"{out}/jobs-desktop.png", full_page=True)
        page.locator("#job-table a.label-chip", has_text="suite=other").first.click()
        page.wait_for_url("**/jobs?label=suite%3Dother")
        assert page.locator("#job-table tbody tr").count() == 2
        print("jobs: Retry all failed on the filtered three; label chips filter")

        # A server's page: heading, the list's buttons, its graphs, rollouts in its trail.
        page.goto(f"{base}/servers")
        kept_id = page.locator(f"#server-table tbody tr:has(a[title='{old}'])").first.get_attribute("data-id")
        page.goto(f"{base}/servers/{kept_id}")
        assert page.locator("h1").inner_text() == f"Server {kept_id}"
        for name in ["Disable", "Terminate", "Force"]:
            assert page.locator("#server-actions").get_by_role("button", name=name).count() == 1, name
        page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
        assert page.locator("#charts figure.chart").count() == 3
        trail = page.locator("table", has_text="rollout.").last.inner_text()
        disable = page.locator("table tr", has_text="rollout.disable")
        assert disable.count() == 1 and kept_id in disable.inner_text(), trail
        assert f"release #{release} had disabled it; a later rollout enabled it again" in trail, trail
        page.screenshot(path=f"{out}/server-desktop.png", full_page=True)
        print("server page: heading, buttons, graphs, the rollouts' disables in its trail")

        # The phone: never wider than the screen; the navigation folds behind Menu.
        page.set_viewport_size(PHONE)
        for name, path in [("overview", "/"), ("servers", "/servers"), ("jobs", "/jobs"),
                           ("rollout", rollback_url[len(base):]), ("metrics", "/dashboards")]:
            page.goto(f"{base}{path}")
            if name in ("overview", "metrics"):
                page.locator("#charts[data-ready='1']").wait_for(timeout=30000)
            fits(page, name)
            if name == "overview":
                bottom = page.evaluate("document.querySelector('#rollout-card').getBoundingClientRect().bottom")
                assert bottom <= PHONE["height"], f"the Rollout card ends at {bottom}px, below the fold"
            assert not page.locator("#main-nav").is_visible(), f"{name}: the navigation is not folded"
            page.screenshot(path=f"{out}/{name}-phone.png", full_page=False)
        page.goto(f"{base}/")
        page.get_by_role("button", name="Menu").click()
        page.locator("#main-nav").get_by_role("link", name="Servers").click()
        page.wait_for_url(f"{base}/servers")
        print(f"phone: 5 pages fit 390px; Menu opens the navigation")
        browser.close()
    for e in errors:
        print(e)
    print(f"console errors: {len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
