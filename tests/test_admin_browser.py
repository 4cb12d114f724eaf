"""The ``/admin`` page in a real headless Chromium: key entry, charts drawn, a 👎 that moves a posterior.

Needs Debian's Chromium (``apt-get install -y chromium chromium-driver``) and the Playwright
Python package; Playwright's own browser download is never used (no CDN here), so without
``/usr/bin/chromium`` the browser tests skip and say why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.fake_upstream import FakeUpstream
from ops.procs import REPO, GatewayProcess
from tests.helpers import demo_pool

CHROMIUM = Path(os.environ.get("COMPASS_CHROMIUM", "/usr/bin/chromium"))
ADMIN_KEY = "admin-key-for-the-browser-test"
SCREENSHOT = REPO / "ops" / "screenshots" / "admin.png"
LATEST = REPO / "ops" / "screenshots" / "latest" / "admin.png"
# Short prompts route as "simple", long ones as "complex" (the length rule); repeats hit the cache.
PROMPTS = [
    "What is 2 + 2?",
    "Name a prime number.",
    "Summarise this: " + "the quick brown fox jumps over the lazy dog " * 20,
    "Prove the statement step by step: " + "every even number above two is a sum of two primes; " * 60,
]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's with `apt-get install -y chromium chromium-driver`",
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "models": demo_pool(upstream),
        "classifier": {"backend": "length"},
        "security": {"admin_key": ADMIN_KEY},
        "storage": {"flush_interval_ms": 5},
    }
    with GatewayProcess(tmp_path_factory.mktemp("admin"), config) as process:
        yield process


@pytest.fixture(scope="module")
def client_key(gateway: GatewayProcess) -> str:
    """A tenant's key, made the way an operator would: ``compass keys create`` against the server."""
    env = {**os.environ, "COMPASS_ADMIN_KEY": ADMIN_KEY, "HF_HUB_OFFLINE": "1"}
    config = gateway.home / "compass.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "compass", "keys", "create", "--tenant", "acme", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.split()[-1]


@pytest.fixture(scope="module")
def traffic(gateway: GatewayProcess, client_key: str) -> list[dict[str, Any]]:
    """Three waves of routed requests a second apart (so the timeline has several buckets)."""

    def ask(job: tuple[int, str]) -> dict[str, Any]:
        i, key = job
        body = {"model": "auto", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        url = f"{gateway.url}/v1/chat/completions"
        response = httpx.post(url, json=body, headers=bearer(key), timeout=60)
        response.raise_for_status()
        return response.json()

    answers: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=6) as pool:
        for wave in range(3):
            jobs = [(i, client_key if i % 3 else ADMIN_KEY) for i in range(wave, wave + 8)]
            answers += list(pool.map(ask, jobs))
            time.sleep(1.1)
    return answers


def admin_get(gateway: GatewayProcess, path: str) -> Any:
    response = httpx.get(f"{gateway.url}{path}", headers=bearer(ADMIN_KEY), timeout=30)
    response.raise_for_status()
    return response.json()


def test_admin_api_needs_the_admin_key(gateway: GatewayProcess, client_key: str) -> None:
    paths = ["/admin/api/bandit", "/admin/api/requests", "/admin/api/timeline", "/admin/api/savings"]
    for path in [*paths, "/admin"]:
        url = f"{gateway.url}{path}"
        missing = httpx.get(url, timeout=30)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        client = httpx.get(url, headers=bearer(client_key), timeout=30)
        assert client.status_code == 403 and client.json()["error"]["type"] == "permission_error"
        assert httpx.get(url, headers=bearer(ADMIN_KEY), timeout=30).status_code == 200
    # A browser's navigation carries no key: it gets the (data-free) page, still with a 401.
    page = httpx.get(f"{gateway.url}/admin", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 401 and 'id="login"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{gateway.url}/admin/static/vendor/uPlot.iife.min.js", timeout=30)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{gateway.url}/admin/static/../admin.py", timeout=30).status_code == 404


def test_savings_and_timeline_match_the_history(
    gateway: GatewayProcess, traffic: list[dict[str, Any]]
) -> None:
    savings = admin_get(gateway, "/admin/api/savings")
    sql = {"sql": "SELECT sum(cost_usd), sum(prompt_tokens), sum(completion_tokens) FROM requests"}
    response = httpx.post(f"{gateway.url}/admin/api/sql", json=sql, headers=bearer(ADMIN_KEY), timeout=30)
    cost, prompt, completion = response.json()["rows"][0]
    strongest = (prompt * 10 + completion * 40) / 1e6  # demo-large's list prices
    assert savings["strongest_model"]["model"] == "demo-large"
    assert savings["requests"] == len(traffic)
    assert savings["cost_usd"] == pytest.approx(cost)
    assert savings["saved_usd"] == pytest.approx(strongest - cost)
    timeline = admin_get(gateway, "/admin/api/timeline?buckets=60")
    assert sum(timeline["total"]) == len(traffic) and len(timeline["t"]) >= 2
    served = {a["model"] for a in traffic}
    assert set(timeline["models"]) == served
    for i, total in enumerate(timeline["total"]):
        shares = [timeline["share"][m][i] for m in timeline["models"]]
        assert (sum(shares) == pytest.approx(1.0)) if total else all(s is None for s in shares)


COUNT_COLOUR = """([chart, colour]) => {
  const canvas = document.querySelector(`[data-chart="${chart}"] canvas`);
  const rgb = colour.match(/\\d+/g).map(Number);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const d = Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1]) + Math.abs(data[i + 2] - rgb[2]);
    if (data[i + 3] > 200 && d < 40) n++;
  }
  return n;
}"""


def swatch_colour(page: Any, selector: str) -> str:
    return page.eval_on_selector(f"{selector} .swatch", "e => getComputedStyle(e).backgroundColor")


@needs_chromium
def test_admin_page_in_chromium(
    gateway: GatewayProcess, traffic: list[dict[str, Any]], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    recent = admin_get(gateway, "/admin/api/requests?limit=25")["data"]
    target = next(r for r in recent if r["routing"] and r["routing"]["context"])
    context, model = target["routing"]["context"], target["model"]
    before = admin_get(gateway, "/admin/api/bandit")["contexts"][context][model]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = page.goto(f"{gateway.url}/admin")
            assert response is not None and response.status == 401  # no key yet: the login form
            page.wait_for_selector("body[data-state=login]")
            page.fill("#key", ADMIN_KEY)
            page.click("#login button[type=submit]")
            page.wait_for_selector("body[data-state=loaded]", timeout=30_000)

            # Data from the server: the cards, every recent request id, one density chart per context.
            requests_card = page.inner_text("[data-card=requests] b")
            assert int(requests_card) == len(traffic)
            ids = page.eval_on_selector_all("#recent tr[data-id]", "rows => rows.map(r => r.dataset.id)")
            assert ids == [r["id"] for r in recent]
            assert page.is_visible(f'#contexts [data-context="{context}"] canvas')

            # The charts are drawn: pixels in the series' colours on each canvas.
            row = f'#contexts [data-context="{context}"] tr[data-model="{model}"]'
            assert page.evaluate(COUNT_COLOUR, [f"posterior:{context}", swatch_colour(page, row)]) > 50
            drawn = [("cost", "rgb(42, 157, 143)"), ("cache", "rgb(153, 153, 153)")]  # actual $, requests
            if admin_get(gateway, "/stats")["cache"]["hits"]:
                drawn.append(("cache", "rgb(106, 76, 147)"))  # the hit rate, when the cache answered
            for chart, colour in drawn:
                assert page.evaluate(COUNT_COLOUR, [chart, colour]) > 20, (chart, colour)
            share_colour = swatch_colour(page, f'#recent tr[data-model="{model}"]')
            assert page.evaluate(COUNT_COLOUR, ["share", share_colour]) > 20

            # 👎 on the target request: the posterior moves, on the server and on the page.
            beta_cell = f"{row}[data-beta]"
            shown_before = float(page.get_attribute(beta_cell, "data-beta") or "nan")
            assert shown_before == pytest.approx(before["beta"], rel=0.05)
            page.click(f'#recent tr[data-id="{target["id"]}"] button[data-thumbs=down]')
            voted = f'#recent tr[data-id="{target["id"]}"][data-feedback=down]'
            page.wait_for_selector(voted, timeout=15_000)
            after = admin_get(gateway, "/admin/api/bandit")["contexts"][context][model]
            assert after["beta"] >= before["beta"] + 0.5 and after["mean"] < before["mean"]
            page.wait_for_function(
                "([sel, old]) => parseFloat(document.querySelector(sel).dataset.beta) > old + 0.5",
                arg=[beta_cell, shown_before],
                timeout=15_000,
            )
            assert not errors, errors

            page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "admin.png").stat().st_size > 10_000
    # Every run leaves its screenshot in ops/screenshots/latest/ (ignored by git); the tracked
    # picture is refreshed on request only, so a test run leaves the tree clean.
    LATEST.parent.mkdir(parents=True, exist_ok=True)
    LATEST.write_bytes((tmp_path / "admin.png").read_bytes())
    if os.environ.get("COMPASS_UPDATE_SCREENSHOT"):
        save_small_copy(tmp_path / "admin.png", SCREENSHOT)


def save_small_copy(source: Path, target: Path) -> None:
    """The tracked screenshot, reduced to a 64-colour palette (a fraction of the size) when Pillow is here."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:
        target.write_bytes(source.read_bytes())
        return
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)
