#!/usr/bin/env python
"""Run the chapter notebooks in a real JupyterLab in headless Chromium and check that their widgets work.

nbval executes the notebooks but never renders a widget; this script is the check that the explorers'
sliders, dropdowns, check boxes and text boxes, the quiz buttons, the live memory plot and the tqdm
bars draw and respond in JupyterLab.

    .venv/bin/python scripts/check_widgets_in_browser.py [--notebook 01_lora [--notebook 03 ...]]
                                                          [--out DIR] [--matplotlib inline|widget] [--keep]

--notebook takes any name of its chapter (00_memory_anatomy, 00, memory, lora, ...) or a path; repeat it for
several; the default is all five chapters. --matplotlib widget runs each copy with `%matplotlib
widget` (ipympl) first, as a learner may.

Needs (for course developers and CI; `make check-widgets` installs the second, .ci/run both):
    apt-get install -y chromium              # Debian's package; the script never downloads a browser
    .venv/bin/pip install -e ".[dev]"        # the playwright driver only; do NOT run `playwright install`
Use --chromium PATH for another Chromium/Chrome binary (default /usr/bin/chromium).

What it does: copies the notebooks into a temporary directory (so nothing in the checkout is saved or
touched), starts one `jupyter lab` on 127.0.0.1 with a free port, no token and every Jupyter/IPython/
matplotlib state directory plus EFFTRAIN_DRILL_PROGRESS (one progress file, as a learner has) inside
the temporary directory, and one headless Chromium page. Then, per notebook, in its own kernel: opens
it, clears and runs all cells, waits for the kernel to be idle, checks the following, and shuts the
kernel down before the next:

  explorers         every cell whose output is a widget with controls (found, not listed here): it
                    draws; changing each control (a slider by one arrow-key step, a dropdown to another
                    option, a check box, a toggle button, a text box) redraws the output next to it
                    (its picture's bytes or its text change) and shows no traceback
  quiz              Reveal shows the answer; "I got it"/"I missed it" record, update the score and move
                    on; Next skips; a numeric card's Check says wrong / right (numeric cards are found by
                    stepping with Next; a chapter without one left says so as INFO, not a failure); the
                    progress file gets the results
  mock interview    (the capstone) Start shows the first question and the countdown ticks down
  live memory plot  (chapters with one) its picture appears and is redrawn during training; the tqdm
                    bars render
  widgets           no widget anywhere is stuck on "Loading widget..." or "Error displaying widget"
  errors            every code cell ran; no cell has an error output (stderr outputs fail too: the
                    course's notebooks are meant to be free of stderr noise); no widget errors in the
                    browser console

One PASS/FAIL line per check, a summary per notebook and a last line "widgets: N passed, M failed";
exit status 1 if any check fails (`make check-widgets` runs it; .ci/run runs that after the tests).
Screenshots go to --out/<notebook>/ (default: a new temporary directory, printed at the end). All
five take about 5 minutes on 2 idle CPU cores: each notebook's own run time, its widget checks, and
about 20 s once to start the lab and the browser.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from efftrain_lib.chapters import CHAPTERS, UnknownChapter
from efftrain_lib.chapters import resolve as resolve_chapter

REPO = Path(__file__).resolve().parents[1]
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
BAD_WIDGET_TEXT = ("Error displaying widget", "Loading widget...")
# The explorers' controls: sliders (SelectionSlider too), dropdowns, check boxes, toggle buttons, text boxes.
CONTROLS = (".widget-slider, .widget-hslider, .widget-dropdown, .widget-checkbox, .widget-toggle-button,"
            " .widget-text")

# Helpers evaluated in the page: find cells by their source, bring them into view (JupyterLab's
# notebook may leave cells out of the DOM until they are scrolled to), read outputs from the models.
JS_HELPERS = r"""
() => {
  window.__eff = {
    panel() { return window.jupyterapp.shell.currentWidget; },
    nb() { return this.panel().content; },
    kernelStatus() {
      const s = this.panel().sessionContext;
      return s && s.session && s.session.kernel ? s.session.kernel.status : 'none';
    },
    findCell(text) {
      return this.nb().widgets.findIndex(
        c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(text));
    },
    async show(index, tag) {
      const nb = this.nb();
      const cell = nb.widgets[index];
      cell.node.setAttribute('data-eff', tag);
      await nb.scrollToItem(index, 'start');
      cell.node.scrollIntoView({block: 'start'});
      return cell.isAttached !== false;
    },
    outputs(index) { return this.nb().widgets[index].model.outputs.toJSON(); },
    codeCells() {
      return this.nb().widgets.map((c, i) => [c, i]).filter(([c]) => c.model.type === 'code')
        .map(([c, i]) => ({index: i, count: c.model.executionCount,
                           source: c.model.sharedModel.getSource().slice(0, 80),
                           outputs: c.model.outputs.toJSON()}));
    },
  };
  return true;
}
"""


class Report:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(ok for _, ok, _ in self.results)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_environment(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    dirs = {
        "JUPYTER_CONFIG_DIR": tmp / "jupyter" / "config",
        "JUPYTER_DATA_DIR": tmp / "jupyter" / "data",
        "JUPYTER_RUNTIME_DIR": tmp / "jupyter" / "runtime",
        "IPYTHONDIR": tmp / "ipython",
        "MPLCONFIGDIR": tmp / "mpl",
        "HF_HOME": tmp / "hf",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env["EFFTRAIN_DRILL_PROGRESS"] = str(tmp / "drill_progress.json")
    env["PYTHONHASHSEED"] = "0"
    env.pop("EFFTRAIN_LIVEPLOT", None)  # the live plot must be live here, as for a learner
    env.pop("JUPYTER_PATH", None)
    return env


def write_lab_settings(settings_dir: Path) -> None:
    """No autosave (the copy is throwaway anyway), no news or update checks (no network)."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False},
    }
    for rel, value in settings.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def start_lab(jupyter: Path, root: Path, env: dict[str, str], settings_dir: Path, log: Path):
    port = free_port()
    cmd = [str(jupyter), "lab", "--no-browser", "--ServerApp.token=", "--ServerApp.password=",
           "--LabApp.expose_app_in_browser=True", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings_dir}",
           f"--LabApp.workspaces_dir={settings_dir.parent / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # JupyterLab refuses to run as root without it
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer on {url} within 90 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def digest(text: str | None) -> str:
    return hashlib.sha1((text or "").encode()).hexdigest()[:10]


class Checker:
    def __init__(self, page, out: Path, report: Report, progress_file: Path):
        self.page = page
        self.out = out
        self.report = report
        self.progress_file = progress_file
        self.shots: list[Path] = []

    # -- page helpers ---------------------------------------------------------------------------
    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    def shot(self, locator, name: str, outputs_only: bool = True) -> None:
        """Screenshot a cell's outputs (or the whole `locator` / page) into --out."""
        path = self.out / f"{len(self.shots) + 1:02d}_{name}.png"
        try:
            if outputs_only and locator is not self.page:
                wrapper = locator.locator(".jp-Cell-outputWrapper")
                if wrapper.count():
                    locator = wrapper.first
            locator.screenshot(path=str(path), timeout=10_000)
        except Exception:  # a screenshot must never hide the check's own result
            self.page.screenshot(path=str(path))
        self.shots.append(path)

    def cell(self, source_snippet: str, tag: str):
        index = self.js("t => window.__eff.findCell(t)", source_snippet)
        if index < 0:
            raise LookupError(f"no code cell contains {source_snippet!r}")
        self.js("([i, t]) => window.__eff.show(i, t)", [index, tag])
        locator = self.page.locator(f"[data-eff={tag}]")
        locator.wait_for(state="attached", timeout=10_000)
        return index, locator

    def img_src(self, locator) -> str | None:
        """The last picture under `locator`: an <img>'s data URL, or an ipympl canvas's pixels."""
        pictures = locator.locator("img, .jupyter-matplotlib-canvas-div canvas:first-of-type")
        if pictures.count() == 0:
            return None
        return pictures.last.evaluate("e => e.tagName === 'IMG' ? e.src : e.toDataURL()")

    def wait_widgets_rendered(self, locator, timeout: float = 15.0) -> str:
        """'' once the cell's widgets are drawn, else what is wrong."""
        deadline = time.time() + timeout
        problem = "no widget drawn"
        while time.time() < deadline:
            text = locator.inner_text()
            bad = [t for t in BAD_WIDGET_TEXT if t in text]
            if not bad and locator.locator(".jupyter-widgets").count() > 0:
                return ""
            problem = f"shows {bad[0]!r}" if bad else "no widget drawn"
            self.page.wait_for_timeout(250)
        return problem

    def nudge_slider(self, slider, presses: int, key: str = "ArrowRight") -> tuple[str, str]:
        readout = slider.locator(".widget-readout")
        before = readout.inner_text().strip()
        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(presses):
            handle.press(key)
            self.page.wait_for_timeout(40)
        return before, readout.inner_text().strip()

    # -- the checks -----------------------------------------------------------------------------
    def output_signature(self, cell) -> str:
        """What the explorer shows: its last picture's bytes (data URL) and the text of its outputs."""
        return cell.evaluate("""node => {
            const imgs = [...node.querySelectorAll('.widget-output img, .jupyter-widgets-output-area img')];
            const outs = [...node.querySelectorAll('.widget-output')];
            return (imgs.length ? imgs[imgs.length - 1].src : '') + '|' + outs.map(o => o.innerText).join('\\n');
        }""")

    def wait_for_change(self, cell, before: str, timeout: float) -> str | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            now = self.output_signature(cell)
            if now != before:
                self.page.wait_for_timeout(400)  # let a burst of redraws settle
                return self.output_signature(cell)
            self.page.wait_for_timeout(200)
        return None

    def change_control(self, control) -> tuple[str, str, str]:
        """Change one control as a learner would; returns (its label, value before, value after)."""
        classes = control.get_attribute("class") or ""
        labels = control.locator(".widget-label, .widget-label-basic").all_inner_texts()
        name = next((t.strip() for t in labels if t.replace("\u200b", "").strip()), classes.split()[0])
        if "widget-slider" in classes or "widget-hslider" in classes:
            before, after = self.nudge_slider(control, 1)
            if before == after:  # at its maximum
                before, after = self.nudge_slider(control, 1, "ArrowLeft")
            return name, before, after
        if "widget-dropdown" in classes:
            select = control.locator("select").first
            n = select.locator("option").count()
            before = select.input_value()
            last = select.locator("option").nth(n - 1).get_attribute("value")
            select.select_option(index=0 if before == last else n - 1)
            return name, before, select.input_value()
        if "widget-checkbox" in classes:
            box = control.locator("input").first
            before = str(box.is_checked())
            box.click()
            return name, before, str(box.is_checked())
        if "widget-toggle-button" in classes:
            before = str("mod-active" in classes)
            control.click()
            return name, before, str("mod-active" in (control.get_attribute("class") or ""))
        box = control.locator("input").first  # Text / IntText / FloatText
        before = box.input_value()
        if box.get_attribute("type") == "number":
            new = format(float(before or 1) * 2, "g")
        else:
            new = "1e-8" if before != "1e-8" else "0.1"
        box.fill(new)
        box.press("Enter")
        return name, before, box.input_value()

    def check_explorer(self, index: int, name: str, timeout: float) -> None:
        """Every control of one explorer: changing it redraws the output next to it."""
        try:
            tag = f"x{index}"
            self.js("([i, t]) => window.__eff.show(i, t)", [index, tag])
            cell = self.page.locator(f"[data-eff={tag}]")
            cell.wait_for(state="attached", timeout=10_000)
            problem = self.wait_widgets_rendered(cell)
            sig = self.output_signature(cell)
            if problem or sig == "|":
                self.shot(cell, f"{name}_broken")
                self.report.add(f"{name}: draws", False, problem or "nothing in its output")
                return
            self.report.add(f"{name}: draws", True)
            self.shot(cell, f"{name}_before")
            controls = cell.locator(CONTROLS)
            for i in range(controls.count()):
                control = controls.nth(i)
                if not control.is_visible():
                    continue
                label, before, after = self.change_control(control)
                new = self.wait_for_change(cell, sig, timeout)
                text = cell.inner_text()
                broken = [t for t in ("Traceback", "Error displaying widget") if t in text]
                ok = before != after and new is not None and not broken
                self.report.add(f"{name}: changing '{label}' redraws", ok,
                                f"{before} -> {after}, output {digest(sig)} -> {digest(new)}"
                                + ("" if new else " (output did not change)")
                                + (f", shows {broken}" if broken else ""))
                sig = new or self.output_signature(cell)
            self.shot(cell, f"{name}_after")
        except Exception as e:
            self.report.add(f"{name}", False, f"{type(e).__name__}: {e}")

    def explorer_cells(self) -> list[tuple[int, str]]:
        """Code cells whose output holds a widget with controls, other than the quiz and the live plot."""
        cells = self.js("() => window.__eff.codeCells()")
        found = []
        for c in cells:
            if not any(WIDGET_MIME in o.get("data", {}) for o in c["outputs"]):
                continue
            source = self.js("i => window.__eff.nb().widgets[i].model.sharedModel.getSource()", c["index"])
            if "quiz(" in source or "LiveMemoryPlot(" in source or "mock_interview(" in source:
                continue
            tag = f"e{c['index']}"
            self.js("([i, t]) => window.__eff.show(i, t)", [c["index"], tag])
            loc = self.page.locator(f"[data-eff={tag}]")
            try:
                loc.wait_for(state="attached", timeout=5_000)
                self.wait_widgets_rendered(loc, timeout=5)
                if loc.locator(CONTROLS).count() == 0:
                    continue  # progress bars and the like
            except Exception:
                pass  # check_explorer says what is wrong
            last = [line for line in source.strip().splitlines() if line.strip()][-1]
            name = re.sub(r"\W+", "_", last.split("(")[0].split(".")[-1].split("=")[-1].strip()) or f"cell{c['index']}"
            found.append((c["index"], name))
        return found

    def check_quiz(self) -> None:
        name = "quiz"
        try:
            from efftrain_lib.drill import cards_for, format_number, load_bank

            index = self.js("t => window.__eff.findCell(t)", "quiz(")
            if index < 0:
                self.report.add("quiz", False, "no cell calls quiz(...)")
                return
            source = self.js("i => window.__eff.nb().widgets[i].model.sharedModel.getSource()", index)
            chapter = (re.search(r"""quiz\(\s*["'](\w+)["']""", source) or [None, "lora"])[1]
            cards = {c.id: c for c in cards_for(load_bank(), "all")}
            self.js("([i, t]) => window.__eff.show(i, t)", [index, name])
            cell = self.page.locator(f"[data-eff={name}]")
            cell.wait_for(state="attached", timeout=10_000)
            problem = self.wait_widgets_rendered(cell)
            if problem:
                self.shot(cell, "quiz_broken")
                self.report.add(f"quiz({chapter}): widget draws", False, problem)
                return
            self.report.add(f"quiz({chapter}): widget draws", True)

            def button(text):
                return cell.get_by_role("button", name=text, exact=True)

            def header_id():
                text = cell.locator(".widget-html").first.inner_text()
                return text.split("]", 1)[1].split("·")[0].strip() if "]" in text else text

            def current():
                return cards.get(header_id())

            def score():
                return cell.locator(".widget-label", has_text="Score:").first.inner_text().strip()

            def until(predicate, timeout=8.0):
                deadline = time.time() + timeout
                while time.time() < deadline:
                    if predicate():
                        return True
                    self.page.wait_for_timeout(150)
                return False

            def go_next():
                """The next card, or None once Next is disabled (the last card was passed)."""
                if button("Next").is_disabled():
                    return None
                old = header_id()
                button("Next").click()
                until(lambda: header_id() != old or button("Next").is_disabled())
                return current()

            def find(numeric: bool):
                """Step with Next to the first card (from here) that is / is not numeric; None if none."""
                card = current()
                while card is not None and card.is_numeric != numeric:
                    card = go_next()
                return card

            self.shot(cell, "quiz_start")

            pending = ["wrong", "right"]  # numeric Check answers still to try, on numeric cards met on the way

            def numeric_check(card, verdict):
                """Answer the current (numeric) card wrong / right through Check."""
                value = card.numeric_answer if verdict == "right" else card.numeric_answer * 3 + 7
                box = cell.locator(".widget-text input").first
                box.fill(format_number(value))
                before = score()
                button("Check").click()
                expect = "Correct" if verdict == "right" else "Not quite"
                seen = until(lambda: expect in cell.inner_text() and score() != before)
                self.shot(cell, f"quiz_numeric_{verdict}")
                self.report.add(f"quiz: numeric Check says {verdict}", seen,
                                f"card {card.id}, typed {format_number(value)!r}, "
                                f"score {before!r} -> {score()!r}")

            def find_text_card():
                """Step to the next text card; numeric cards passed on the way get a pending Check."""
                card = current()
                while card is not None and card.is_numeric:
                    if pending:
                        numeric_check(card, pending.pop(0))
                    card = go_next()
                return card

            def self_grade(label, got):
                card = find_text_card()
                if card is None:
                    self.report.add(f"quiz: '{label}' records, updates the score and advances", False,
                                    "no text card left to grade")
                    return None
                before = score()
                button("Reveal answer").click()
                revealed = until(lambda: card.answer.split()[0] in cell.inner_text()
                                 and button(label).is_enabled())
                if got:
                    self.shot(cell, "quiz_revealed")
                    self.report.add("quiz: Reveal shows the answer", revealed, f"card {card.id}")
                button(label).click()
                word = "got it" if got else "missed"
                ok = until(lambda: score() != before and header_id() != card.id
                           and f"Recorded {card.id}: {word}" in cell.inner_text())
                if got:
                    self.shot(cell, "quiz_after_got_it")
                self.report.add(f"quiz: '{label}' records, updates the score and advances", ok,
                                f"{card.id} -> {header_id()}, {before!r} -> {score()!r}")
                return card

            first = self_grade("I got it", True)
            self_grade("I missed it", False)
            here = header_id()
            go_next()
            self.report.add("quiz: Next advances (skipping a card)", header_id() != here,
                            f"{here} -> {header_id()}")
            while pending:  # step with Next to numeric cards; stop quietly once Next is disabled
                card = find(numeric=True)
                if card is None:
                    print(f"INFO  quiz: no numeric card left in chapter {chapter!r} (stepped with Next until "
                          f"it was disabled): numeric Check ({', '.join(pending)}) not checked", flush=True)
                    break
                numeric_check(card, pending.pop(0))
                go_next()

            saved = {}
            if self.progress_file.exists():
                saved = json.loads(self.progress_file.read_text())
            text = json.dumps(saved)
            ok = first is not None and first.id in text
            self.report.add("quiz: progress saved to EFFTRAIN_DRILL_PROGRESS", ok,
                            f"{self.progress_file} {'holds' if ok else 'lacks'} {first and first.id}")
        except Exception as e:
            self.shot(self.page.locator("[data-eff=quiz]"), "quiz_exception")
            self.report.add("quiz", False, f"{type(e).__name__}: {e}")

    def check_mock(self) -> None:
        """The mock interview's widget, where a notebook has one: Start shows the first question, and the
        clock, ticked by the browser's Play widget, counts down."""
        index = self.js("t => window.__eff.findCell(t)", "mock_interview(")
        if index < 0:
            return
        try:
            self.js("([i, t]) => window.__eff.show(i, t)", [index, "mock"])
            cell = self.page.locator("[data-eff=mock]")
            cell.wait_for(state="attached", timeout=10_000)
            problem = self.wait_widgets_rendered(cell)
            self.report.add("mock interview: widget draws", not problem, problem or "")
            if problem:
                return

            def clock():  # the clock label (the header above it is bold too)
                return cell.locator("b[style*=tabular-nums]").first.inner_text().strip()

            before = clock()
            cell.get_by_role("button", name="Start", exact=True).click()
            self.page.wait_for_timeout(1_500)
            started = clock()
            self.page.wait_for_timeout(2_500)
            later = clock()
            self.shot(cell, "mock_started")
            self.report.add("mock interview: Start starts the clock", "press Start" in before and "left" in started,
                            f"{before!r} -> {started!r}")
            self.report.add("mock interview: the countdown ticks", started != later and "left" in later,
                            f"{started!r} -> {later!r} in 2.5 s")
            text = cell.inner_text()
            self.report.add("mock interview: the first question is shown", "Reveal" in text, text[:120])
        except Exception as e:
            self.report.add("mock interview", False, f"{type(e).__name__}: {e}")

    def saved_widget_views(self) -> str:
        """Before running: what the notebook's saved widget outputs show (information, not a check)."""
        cells = self.js("() => window.__eff.codeCells()")
        seen = {}
        for c in cells:
            if not any(WIDGET_MIME in o.get("data", {}) for o in c["outputs"]):
                continue
            tag = f"s{c['index']}"
            self.js("([i, t]) => window.__eff.show(i, t)", [c["index"], tag])
            loc = self.page.locator(f"[data-eff={tag}] .jp-Cell-outputWrapper")
            try:
                loc.wait_for(state="attached", timeout=5_000)
                self.page.wait_for_timeout(500)
                text = loc.inner_text()
            except Exception as e:
                text = type(e).__name__
            kind = next((t for t in BAD_WIDGET_TEXT if t in text), None)
            if kind is None:
                kind = "drawn" if loc.locator(".jupyter-widgets").count() else "text fallback"
            seen.setdefault(kind, []).append(c["index"])
            if len(seen[kind]) == 1:
                self.shot(self.page.locator(f"[data-eff={tag}]"), f"saved_output_{kind.split()[0].lower()}")
        return ", ".join(f"{kind}: cells {ids}" for kind, ids in seen.items()) or "no saved widget outputs"

    def check_widgets_everywhere(self) -> None:
        """Every output holding a widget draws it (none stuck loading or erroring)."""
        cells = self.js("() => window.__eff.codeCells()")
        bad = []
        for c in cells:
            if not any(WIDGET_MIME in o.get("data", {}) for o in c["outputs"]):
                continue
            tag = f"w{c['index']}"
            self.js("([i, t]) => window.__eff.show(i, t)", [c["index"], tag])
            loc = self.page.locator(f"[data-eff={tag}] .jp-Cell-outputWrapper")
            try:
                loc.wait_for(state="attached", timeout=5_000)
                deadline = time.time() + 10
                while True:
                    text = loc.inner_text()
                    stuck = [t for t in BAD_WIDGET_TEXT if t in text]
                    if not stuck or time.time() > deadline:
                        break
                    self.page.wait_for_timeout(250)
            except Exception as e:
                stuck = [f"{type(e).__name__}"]
            if stuck:
                bad.append(f"cell {c['index']} ({c['source'][:40]!r}): {stuck}")
        self.report.add("widgets: none stuck on 'Loading widget...' or 'Error displaying widget'",
                        not bad, "; ".join(bad))

    def check_errors(self) -> None:
        cells = self.js("() => window.__eff.codeCells()")
        errors, stderr, unrun = [], [], []
        for c in cells:
            if c["count"] is None:
                unrun.append(c["index"])
            for o in c["outputs"]:
                if o.get("output_type") == "error":
                    errors.append(f"cell {c['index']}: {o.get('ename')}: {o.get('evalue')}")
                elif o.get("output_type") == "stream" and o.get("name") == "stderr":
                    text = "".join(o.get("text", ""))
                    stderr.append(f"cell {c['index']}: {text.strip()[:160]!r}")
        self.report.add("cells: every code cell ran", not unrun, f"not run: {unrun}" if unrun else
                        f"{len(cells)} code cells")
        self.report.add("cells: no error output", not errors, "; ".join(errors))
        self.report.add("cells: no stderr output", not stderr, "; ".join(stderr))


def run_notebook(checker: Checker, timeout: float) -> dict:
    """Clear and run all cells; meanwhile watch the live memory plot cell. Returns what was seen."""
    page = checker.page
    live_index = checker.js("t => window.__eff.findCell(t)", "LiveMemoryPlot(title=")
    seen = {"live_srcs": set(), "progress_bars": 0, "live_bad": set(), "live_shot": False,
            "live_index": live_index}
    # Count the live plot's pictures in its output model as they arrive (each display update), so a
    # short training run whose redraws fall between two polls below is still seen to redraw.
    checker.js("""i => {
        window.__livePngs = new Set();
        if (i < 0) return;
        const outputs = window.__eff.nb().widgets[i].model.outputs;
        const hash = s => { let h = 0; for (let k = 0; k < s.length; k++) h = (h * 31 + s.charCodeAt(k)) | 0;
                            return s.length + ':' + h; };
        const grab = () => { for (const o of outputs.toJSON()) {
            const png = o.data && o.data['image/png'];
            if (png) window.__livePngs.add(hash(Array.isArray(png) ? png.join('') : png)); } };
        outputs.changed.connect(grab);
        if (outputs.stateChanged) outputs.stateChanged.connect(grab);
    }""", live_index)
    checker.js("""() => {
        window.__runDone = false;
        const app = window.jupyterapp;
        app.commands.execute('notebook:clear-all-cell-outputs');
        app.commands.execute('notebook:run-all-cells').then(
            r => { window.__runResult = r; window.__runDone = true; },
            e => { window.__runError = String(e); window.__runDone = true; });
    }""")
    start = time.time()
    live_cell = page.locator("[data-eff=live]")
    while time.time() - start < timeout:
        done = checker.js("() => window.__runDone")
        if live_index >= 0:
            outputs = checker.js("i => window.__eff.outputs(i)", live_index)
            count = checker.js("i => window.__eff.nb().widgets[i].model.executionCount", live_index)
            running = bool(outputs) and count is None
            if running or (outputs and not seen["live_srcs"]):
                checker.js("([i, t]) => window.__eff.show(i, t)", [live_index, "live"])
                try:
                    bars = live_cell.locator(".widget-hprogress, .widget-progress").count()
                    seen["progress_bars"] = max(seen["progress_bars"], bars)
                    src = checker.img_src(live_cell)
                    if src:
                        seen["live_srcs"].add(digest(src))
                    text = live_cell.inner_text(timeout=1_000)
                    seen["live_bad"].update(t for t in BAD_WIDGET_TEXT if t in text)
                    if bars and src and not seen["live_shot"] and len(seen["live_srcs"]) >= 2:
                        checker.shot(live_cell, "live_plot_during_training")
                        seen["live_shot"] = True
                except Exception:
                    pass
        if done and checker.js("() => window.__eff.kernelStatus()") == "idle":
            break
        page.wait_for_timeout(400)
    seen["seconds"] = time.time() - start
    seen["live_pictures"] = max(len(seen["live_srcs"]), checker.js("() => window.__livePngs.size"))
    seen["done"] = checker.js("() => window.__runDone")
    seen["result"] = checker.js("() => window.__runResult === undefined ? null : window.__runResult")
    seen["error"] = checker.js("() => window.__runError || null")
    return seen


NOTEBOOKS = tuple(c.notebook_stem for c in CHAPTERS.values() if c.notebook)  # the course's, in order


def notebook_path(name: str) -> Path:
    """A notebook by its path, or by any name of its chapter ("01_lora", "01", "lora", "01_lora.ipynb")."""
    path = Path(name)
    if path.suffix == ".ipynb" and (REPO / path).exists():
        return (REPO / path).resolve()
    try:
        chapter = resolve_chapter(name)
    except UnknownChapter as e:
        raise SystemExit(f"unknown notebook {name!r}: {e}") from None
    if not chapter.notebook:
        raise SystemExit(f"chapter {chapter.key!r} has no notebook yet")
    return REPO / "notebooks" / chapter.notebook


def prepare_root(notebooks: list[Path], args) -> tuple[Path, Path]:
    """A temporary directory holding a copy of each notebook (so nothing in the checkout is saved or
    touched); returns (the temporary directory, the notebooks' folder inside it)."""
    tmp = Path(tempfile.mkdtemp(prefix="efftrain-browser-"))
    root = tmp / "work"
    root.mkdir()
    for notebook in notebooks:
        shutil.copy2(notebook, root / notebook.name)
        if args.matplotlib == "widget":
            nb = json.loads((root / notebook.name).read_text())
            nb["cells"].insert(0, {"cell_type": "code", "execution_count": None, "id": "efftrain-ipympl",
                                   "metadata": {}, "outputs": [], "source": ["%matplotlib widget"]})
            (root / notebook.name).write_text(json.dumps(nb))
    return tmp, root


OPEN_WAIT = ("n => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
             " return !!(w && w.sessionContext && w.context && w.context.path === n); }")
# Shut the current notebook's kernel down and drop its tab without the "save changes?" dialog.
CLOSE_CURRENT = """async () => {
    const panel = window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.sessionContext) return;
    await panel.sessionContext.shutdown();
    panel.context.model.dirty = false;
    panel.dispose();
}"""


def open_notebook(page, url: str, name: str, fresh: bool) -> None:
    """Open `name` in the lab: by loading the page the first time (or after a broken run), else
    through the running lab's document manager, which saves reloading JupyterLab itself."""
    if fresh:  # ?reset: no notebook from an earlier (broken) run is restored next to this one
        page.goto(f"{url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    else:  # (returns nothing: the opened widget itself cannot be sent back to Python)
        page.evaluate("async n => { await window.jupyterapp.commands.execute('docmanager:open', {path: n}); }",
                      name)
    page.wait_for_function(OPEN_WAIT, arg=name, timeout=60_000)
    page.evaluate(JS_HELPERS)
    page.wait_for_function("() => window.__eff.kernelStatus() === 'idle'", timeout=60_000)
    page.wait_for_function("() => window.__eff.panel().isVisible && window.__eff.nb().node.offsetParent !== null",
                           timeout=30_000)


def check_notebook(page, url: str, name: str, fresh: bool, args, out: Path, report: Report,
                   progress_file: Path, console_errors: list[str]) -> None:
    """Every check of one notebook, in the lab already running in `page` (its own kernel)."""
    t0 = time.time()
    open_notebook(page, url, name, fresh)
    checker = Checker(page, out, report, progress_file)
    checker.shot(page, "opened", outputs_only=False)
    print(f"INFO  saved widget outputs before running: {checker.saved_widget_views()}", flush=True)
    print(f"notebook open after {time.time() - t0:.0f} s; running all cells", flush=True)

    seen = run_notebook(checker, args.run_timeout)
    print(f"run-all finished={seen['done']} after {seen['seconds']:.0f} s", flush=True)
    report.add("run-all completes and the kernel is idle", bool(seen["done"]) and seen["result"] is not False,
               f"{seen['seconds']:.0f} s, result {seen['result']}" + (
                   f", error {seen['error']}" if seen["error"] else ""))

    # the live memory plot and tqdm bars (watched during the run), where the chapter has one
    if seen["live_index"] < 0:
        print("INFO  no LiveMemoryPlot(title=...) cell: live plot not checked", flush=True)
    else:
        _, live = checker.cell("LiveMemoryPlot(title=", "live")
        final = checker.img_src(live)
        checker.shot(live, "live_plot_final")
        report.add("live plot: picture shown and redrawn during training",
                   bool(final) and seen["live_pictures"] >= 2,
                   f"{seen['live_pictures']} distinct pictures sent, final {digest(final)}")
        report.add("live plot: tqdm progress bars render", seen["progress_bars"] > 0
                   and not seen["live_bad"],
                   f"up to {seen['progress_bars']} bars visible at once"
                   + (f", saw {sorted(seen['live_bad'])}" if seen["live_bad"] else ""))

    explorers = checker.explorer_cells()
    print(f"INFO  explorers: {', '.join(f'{n} (cell {i})' for i, n in explorers) or 'none'}", flush=True)
    for index, explorer in explorers:
        checker.check_explorer(index, explorer, args.redraw_timeout)
    checker.check_quiz()
    checker.check_mock()
    checker.check_widgets_everywhere()
    checker.check_errors()
    widget_errors = [e for e in console_errors if "widget" in e.lower() or "model" in e.lower()]
    report.add("browser console: no widget errors", not widget_errors, "; ".join(widget_errors[:3]))


def check_notebooks(notebooks: list[Path], args, jupyter: Path, out: Path) -> dict[str, Report]:
    """All notebooks in one JupyterLab and one browser page, one after the other, each with its own
    kernel (shut down when its checks are done). Starting the lab and loading it in the browser cost
    about 20 s each on 2 CPU cores; sharing them keeps that cost to once."""
    from playwright.sync_api import sync_playwright

    tmp, root = prepare_root(notebooks, args)
    settings_dir = tmp / "lab" / "user-settings"
    write_lab_settings(settings_dir)
    env = lab_environment(tmp)
    reports: dict[str, Report] = {}
    proc, url = start_lab(jupyter, root, env, settings_dir, tmp / "lab.log")
    print(f"JupyterLab at {url} (log {tmp / 'lab.log'})", flush=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            fresh = True
            for notebook in notebooks:
                print(f"\n=== {notebook.name} ===", flush=True)
                shots = out / notebook.stem
                shots.mkdir(parents=True, exist_ok=True)
                report = reports[notebook.stem] = Report()
                console_errors.clear()
                try:
                    check_notebook(page, url, notebook.name, fresh, args, shots, report,
                                   Path(env["EFFTRAIN_DRILL_PROGRESS"]), console_errors)
                    page.evaluate(CLOSE_CURRENT)
                    fresh = False
                except Exception as e:  # the harness itself broke: say so, and reload the lab for the next
                    report.add("harness", False, f"{type(e).__name__}: {e}")
                    fresh = True
            browser.close()
    finally:
        stop(proc)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"INFO  kept {tmp}", flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", action="append",
                        help=f"a notebook to check (repeatable; default: all of {', '.join(NOTEBOOKS)})")
    parser.add_argument("--out", help="directory for the screenshots (default: a new temporary one)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--run-timeout", type=float, default=360.0, help="seconds allowed for one run-all")
    parser.add_argument("--redraw-timeout", type=float, default=30.0,
                        help="seconds allowed for an explorer to redraw after a control changes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary lab directories")
    parser.add_argument("--matplotlib", choices=("inline", "widget"), default="inline",
                        help="widget: run the copy with `%%matplotlib widget` (ipympl) first, as a learner may")
    args = parser.parse_args(argv)

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        print("playwright is missing: .venv/bin/pip install playwright  (and apt-get install -y chromium;"
              " no `playwright install` needed)", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"no browser at {args.chromium}: apt-get install -y chromium, or pass --chromium PATH",
              file=sys.stderr)
        return 2
    notebooks = [notebook_path(n) for n in (args.notebook or NOTEBOOKS)]
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        jupyter = Path(shutil.which("jupyter") or "jupyter")
    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="efftrain-browser-shots-"))

    t0 = time.time()
    try:
        reports = check_notebooks(notebooks, args, jupyter, out)
    except Exception as e:  # the lab or the browser did not start: one failed check that says why
        reports = {"harness": Report()}
        reports["harness"].add("JupyterLab and the browser start", False, f"{type(e).__name__}: {e}")

    print("\n=== summary ===")
    total_passed = total_failed = 0
    for stem, report in reports.items():
        failed = [name for name, ok, _ in report.results if not ok]
        total_failed += len(failed) + (not report.results)  # a notebook that checked nothing fails
        total_passed += len(report.results) - len(failed)
        print(f"{'PASS' if report.ok else 'FAIL'}  {stem}: {len(report.results) - len(failed)} passed, "
              f"{len(failed)} failed" + (f" ({'; '.join(failed)})" if failed else ""))
    print(f"{len(reports)} notebooks in {time.time() - t0:.0f} s; screenshots in {out}")
    print(f"widgets: {total_passed} passed, {total_failed} failed", flush=True)
    return 0 if total_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
