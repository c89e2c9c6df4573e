// Renders /admin in headless Chromium after signing in through the login form, like a person
// would, and fails on any console error, page error or script dialog, on a missing section, or
// when user-provided markup is not shown as text. Writes a full-page screenshot.
//
//   node scripts/browser_check.cjs BASE_URL LOGIN PASSWORD SCREENSHOT XSS_TEXT
//
// Needs playwright-core (NODE_PATH) and Debian's chromium; run by scripts/browser_check.sh.
const { chromium } = require("playwright-core");

const SECTIONS = (process.env.DASHBOARD_SECTIONS || "overview,history,database,factcheck,cache,ratelimits,vault,ai,jobs,report")
  .split(",")
  .filter(Boolean);

async function main() {
  const [base, login, password, screenshot, xss] = process.argv.slice(2);
  const problems = [];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("dialog", async (d) => {
      problems.push(`script dialog opened: ${d.message()}`);
      await d.dismiss();
    });
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
    page.on("response", (r) => r.status() >= 400 && problems.push(`${r.status()} for ${r.url()}`));

    const started = Date.now();
    await page.goto(`${base}/admin/login`);
    await page.fill("input[name=login]", login);
    await page.fill("input[name=password]", password);
    await Promise.all([page.waitForURL(`${base}/admin`), page.click("button[type=submit]")]);
    const renderMs = Date.now() - started;

    for (const id of SECTIONS) {
      if ((await page.locator(`section#${id}`).count()) !== 1) problems.push(`section #${id} missing`);
    }
    const text = await page.locator("body").innerText();
    if (xss && !text.includes(xss)) problems.push(`user text ${JSON.stringify(xss)} not shown as text`);
    if ((await page.locator("script:not([src])").count()) > 0) problems.push("an inline script is on the page");
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(`browser check: signed in and rendered /admin in ${renderMs} ms; ${SECTIONS.length} sections; screenshot ${screenshot}`);
  } finally {
    await browser.close();
  }
  if (problems.length) {
    console.error(`browser check failed:\n  ${problems.join("\n  ")}`);
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(`browser check failed: ${e.stack || e}`);
  process.exit(1);
});
