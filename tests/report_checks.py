"""report.html read back for tests: its images, gallery entries and headline figures, and a
headless-Chromium rendering of it (screenshot, network log, image load check)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
NO_CHROMIUM = (
    f"{CHROMIUM} is missing: headless Chromium renders report.html in this test "
    "(Debian: apt-get install chromium; .ci/run installs it in CI)"
)


@dataclass
class Parsed:
    images: list[dict[str, str]] = field(default_factory=list)  # every <img>'s attributes
    errors: list[dict[str, str]] = field(default_factory=list)  # gallery <figure class="error"> attributes
    keys: dict[str, str] = field(default_factory=dict)  # data-key -> text
    notes: list[str] = field(default_factory=list)  # text of class="note..." elements
    missing_pr: list[str] = field(default_factory=list)  # classes with the "no PR curve" note
    urls: list[str] = field(default_factory=list)  # every src/href/action value
    order: list[str] = field(default_factory=list)  # h2 headings in order
    text: str = ""


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.out = Parsed()
        self._key: str | None = None
        self._note = False
        self._h2 = False
        self._parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for name in ("src", "href", "action", "srcset", "poster"):
            if name in a:
                self.out.urls.append(a[name])
        if tag == "img":
            self.out.images.append(a)
        if tag == "figure" and "error" in a.get("class", "").split():
            self.out.errors.append(a)
        if "data-key" in a:
            self._key = a["data-key"]
        if a.get("data-kind") == "pr-missing":
            self.out.missing_pr.append(a["data-class"])
        if "note" in a.get("class", "").split():
            self._note = True
            self.out.notes.append("")
        self._h2 = tag == "h2"
        if self._h2:
            self.out.order.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._note = False
        self._h2 = False
        self._key = None

    def handle_data(self, data: str) -> None:
        self._parts.append(data)
        if self._key is not None:
            self.out.keys[self._key] = self.out.keys.get(self._key, "") + data
        if self._note:
            self.out.notes[-1] += data
        if self._h2:
            self.out.order[-1] += data


def parse_report(html: str) -> Parsed:
    parser = _Parser()
    parser.feed(html)
    parser.out.text = "".join(parser._parts)
    return parser.out


def kinds(parsed: Parsed, kind: str) -> list[str]:
    """The data-class of every <img> of one kind (pr-curve, histogram, thumb, training), in page order."""
    return [img.get("data-class", "") for img in parsed.images if img.get("data-kind") == kind]


# === Headless Chromium ===

CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const div = document.createElement('div');
  div.id = 'img-check';
  div.setAttribute('data-loaded', loaded);
  div.setAttribute('data-total', imgs.length);
  document.body.appendChild(div);
});
</script>"""

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    # any request that leaves the file would fail: no proxy answers on port 9, no name resolves
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def page_requests(netlog: Path) -> list[str]:
    """URLs of the requests in a Chromium NetLog that a page started (the browser's own background
    requests, e.g. its update check, have the initiator "not an origin")."""
    log = json.loads(netlog.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return sorted(
        {
            e["params"]["url"]
            for e in log["events"]
            if e["type"] == start and e.get("params", {}).get("url") and e["params"].get("initiator") != "not an origin"
        }
    )


@dataclass
class Rendered:
    screenshot: Path
    network_urls: list[str]  # every URL the page asked the network stack for (NetLog)
    images_loaded: int
    images_total: int


def _chromium(args: list[str], profile: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def render(report: Path, work: Path, width: int = 1280, height: int = 6000) -> Rendered:
    """Screenshot ``report`` (with a NetLog of the page load), then load a copy with a check
    script (the report itself has none and its Content-Security-Policy forbids scripts) and
    read how many of its images decoded (naturalWidth > 0) from the dumped DOM."""
    work.mkdir(parents=True, exist_ok=True)
    shot, netlog = work / "report.png", work / "netlog.json"
    result = _chromium(
        [
            f"--window-size={width},{height}",
            f"--screenshot={shot}",
            f"--log-net-log={netlog}",
            "--net-log-capture-mode=Everything",
            report.resolve().as_uri(),
        ],
        work / "profile-shot",
    )
    assert shot.is_file(), result.stderr[-3000:]
    urls = page_requests(netlog)
    checked = work / "checked.html"
    page = report.read_text(encoding="utf-8")
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page, count=1)
    checked.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    shutil.rmtree(work / "profile-dom", ignore_errors=True)
    dom = _chromium(["--dump-dom", "--virtual-time-budget=10000", checked.resolve().as_uri()], work / "profile-dom")
    match = re.search(r'id="img-check" data-loaded="(\d+)" data-total="(\d+)"', dom.stdout)
    assert match, "the check script did not run: " + dom.stderr[-3000:]
    return Rendered(shot, urls, int(match.group(1)), int(match.group(2)))
