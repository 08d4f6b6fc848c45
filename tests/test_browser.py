"""The explorer in a real browser: JupyterLab on loopback, headless Chromium (Playwright), run all cells,
type a caption, move the count slider, and check that the probability display follows.

Needs Debian's `chromium` (.ci/install_browser.sh installs it) and the `playwright` Python package; it
skips, saying which is missing, where either is absent. Playwright drives the system Chromium through
`executable_path`; its own browser download is never used. Saves tests/artifacts/explorer.png (and a
copy under $CLIPKIT_ARTIFACTS when set). No network beyond 127.0.0.1.
"""
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_S = 60    # JupyterLab answering /api/status
RUN_ALL_S = 120        # kernel start + imports + every cell of the notebook
UPDATE_S = 30          # one widget interaction -> new probabilities on the page


def _chromium() -> str:
    """Path of a Chromium executable, or skip with the reason (including the installer's, if it left one)."""
    for c in (os.environ.get("CLIPKIT_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if c and shutil.which(c):
            return shutil.which(c)
    why = ARTIFACTS / "browser-unavailable.txt"
    detail = f" .ci/install_browser.sh said: {why.read_text().strip()}" if why.exists() else \
        " Run .ci/install_browser.sh (apt-get install chromium) or set CLIPKIT_CHROMIUM."
    pytest.skip("Chromium not found (looked for $CLIPKIT_CHROMIUM, chromium, chromium-browser, /usr/bin/chromium)."
                + detail)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_copy(root: Path) -> Path:
    """notebooks/explore.ipynb with small parameters and MODEL = "clipkit-nano" (instant, random weights)."""
    nb = nbformat.read(REPO / "notebooks" / "explore.ipynb", as_version=4)
    params, = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    for name, value in {"MODEL": '"clipkit-nano"', "GALLERY_SIZE": "6", "PROBE_N": "24"}.items():
        params.source, n = re.subn(rf"^{name} = [^#\n]*?(\s*#|$)", rf"{name} = {value}\1", params.source, flags=re.M)
        assert n == 1, f"parameter {name} not found in the parameters cell:\n{params.source}"
    nbformat.write(nb, root / "explore.ipynb")
    return root / "explore.ipynb"


def _lab_settings(settings: Path) -> None:
    """No news prompt or update check: nothing should pop up over the notebook (and no network)."""
    d = settings / "@jupyterlab" / "apputils-extension"
    d.mkdir(parents=True)
    (d / "notification.jupyterlab-settings").write_text(json.dumps({"checkForUpdates": False, "fetchNews": "false"}))


def _start_lab(tmp: Path, port: int, token: str):
    root, settings = tmp / "root", tmp / "settings"
    root.mkdir()
    _notebook_copy(root)
    _lab_settings(settings)
    log = open(tmp / "jupyter.log", "w")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "IPYTHONDIR": str(tmp / "ipython"), "CLIPKIT_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: to wait for the kernel
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--ServerApp.terminals_enabled=False"] + (["--allow-root"] if os.geteuid() == 0 else [])  # CI containers
    # own process group: the server and the kernel it starts are stopped together in the finally
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, tmp / "jupyter.log"


def _wait_for_server(proc, port: int, token: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc, port: int, token: str, runtime: Path) -> None:
    """Shut the server down (it stops its kernels), escalating to signals; then kill any kernel it left behind."""
    if proc.poll() is None:
        try:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/api/shutdown?token={token}", method="POST"), timeout=5).close()
            proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)   # the server's own process group (start_new_session)
                    proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
    # kernels run in sessions of their own: find ours by the connection file under our runtime dir
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.parent.name != str(os.getpid()) and str(runtime) in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    if os.environ.get("CLIPKIT_ARTIFACTS"):
        extra = Path(os.environ["CLIPKIT_ARTIFACTS"])
        extra.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, extra / name)
    return path


@pytest.mark.slow  # JupyterLab + a kernel + Chromium: ~30-60 s on 2 CPU cores
@pytest.mark.timeout(300)
def test_explorer_updates_probabilities_in_the_browser(tmp_path):
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed "
                                   "(pip install playwright; `playwright install` is not needed)")
    port, token = _free_port(), secrets.token_hex(16)
    proc, log = _start_lab(tmp_path, port, token)
    try:
        _wait_for_server(proc, port, token, log)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UPDATE_S * 1000)

            def fail(what: str):
                shot = _save_screenshot(page, "explorer-failure.png")
                body = page.inner_text("body")[-3000:]
                pytest.fail(f"{what}\n--- page text (end) ---\n{body}\n--- jupyter log (end) ---\n"
                            f"{log.read_text()[-2000:]}\n(screenshot: {shot})")

            def wait_for_new_text(before: str, what: str) -> str:
                try:
                    page.wait_for_function(
                        "before => { const e = document.querySelector('.clipkit-probs');"
                        " return e && /\\d\\.\\d{3}/.test(e.innerText) && e.innerText !== before; }",
                        arg=before, timeout=UPDATE_S * 1000)
                except sync_api.TimeoutError:
                    fail(f"the probability display did not change within {UPDATE_S} s after {what}; "
                         f"it still reads:\n{before}")
                return probs.inner_text()

            page.goto(f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}",
                      timeout=SERVER_START_S * 1000)
            # the notebook open, its kernel started: then Run > Run All Cells, through the menu bar
            try:
                page.wait_for_function(
                    "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                    " const k = w && w.sessionContext && w.sessionContext.session"
                    " && w.sessionContext.session.kernel; return !!k && k.status === 'idle'; }",
                    timeout=RUN_ALL_S * 1000)
            except sync_api.TimeoutError:
                fail(f"explore.ipynb did not open with an idle kernel within {RUN_ALL_S} s")
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

            probs = page.locator(".clipkit-probs").first
            try:
                probs.wait_for(state="visible", timeout=RUN_ALL_S * 1000)
            except sync_api.TimeoutError:
                fail(f"no probability display (.clipkit-probs) within {RUN_ALL_S} s of Run All Cells")
            first = wait_for_new_text("", "running the notebook")
            assert "P(caption | image)" in first and "three red circles" in first, first

            # 1. type a caption: real keystrokes into the captions textarea
            box = page.locator(".clipkit-captions textarea").first
            box.click()
            page.keyboard.press("Control+End")
            page.keyboard.press("Enter")
            page.keyboard.type("a blue star")
            typed = wait_for_new_text(first, "typing a caption")
            try:
                page.wait_for_function("() => document.querySelector('.clipkit-probs').innerText"
                                       ".includes('a blue star')", timeout=UPDATE_S * 1000)
            except sync_api.TimeoutError:
                fail(f"the typed caption never showed in the probability display:\n{typed}")
            typed = probs.inner_text()

            # 2. move the count slider one step (keyboard on its handle): 3 -> 4 red circles
            handle = page.locator(".clipkit-count .noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            page.keyboard.press("ArrowRight")
            moved = wait_for_new_text(typed, "moving the count slider")
            assert re.search(r"four red circles\s*✓ true", moved), moved   # the true caption followed the image
            assert "a blue star" in moved, moved

            probs.scroll_into_view_if_needed()
            shot = _save_screenshot(page, "explorer.png")
            assert shot.stat().st_size > 10_000
            browser.close()
    finally:
        _stop(proc, port, token, tmp_path / "runtime")
