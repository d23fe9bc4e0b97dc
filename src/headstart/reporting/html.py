"""The HTML shell every page shares (run report, doctor page, map page, contact sheet)."""

from __future__ import annotations

import html
from typing import Any


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:26px;margin:6px 0 4px;overflow-wrap:anywhere}
h2{font-size:20px;margin:34px 0 10px;padding-top:10px;border-top:1px solid #dde1e6}
h3{font-size:16px;margin:18px 0 8px;overflow-wrap:anywhere}
p,li{overflow-wrap:anywhere}
.muted{color:#5b6470;font-size:13px}
nav{font-size:13px;margin:8px 0 0}
nav a{margin-right:12px;color:#2458b3;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 16px;min-width:140px;flex:0 1 auto;max-width:100%}
.card .v{font-size:26px;font-weight:700;overflow-wrap:anywhere}
.card.main .v{font-size:38px;color:#1d4e89}
.card .k{font-size:12px;color:#5b6470;text-transform:uppercase;letter-spacing:.04em}
img.figure{max-width:100%;height:auto;background:#fff;border:1px solid #dde1e6;border-radius:6px;display:block;margin:8px 0}
.scroll{overflow-x:auto;max-width:100%}
.pair{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pair img.figure{max-width:100%;flex:0 1 auto;min-width:0}
.scroll.tall{max-height:520px;overflow-y:auto}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top;max-width:420px;overflow-wrap:anywhere}
th{background:#eef1f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.tile{margin:0;width:124px;background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:5px;font-size:11.5px;line-height:1.3}
.tile img{display:block;max-width:112px;max-height:112px;margin:0 auto}
.tile figcaption{margin-top:4px;overflow-wrap:anywhere}
.tile.wrong{border-color:#d9534f}
.missing{width:112px;height:84px;background:#e3e6ea;color:#5b6470;display:flex;align-items:center;justify-content:center;text-align:center;font-size:11px}
.cls{margin:10px 0 14px}
.bad{color:#b42318}.good{color:#1a7f37}
details>summary{cursor:pointer;color:#2458b3;margin:6px 0}
code{font-size:12.5px;overflow-wrap:anywhere}
"""

CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) broken++;
  }
  var doc = document.documentElement;
  var wide = doc.scrollWidth > doc.clientWidth + 1;
  var el = document.getElementById('page-check');
  el.setAttribute('data-images', imgs.length);
  el.setAttribute('data-broken', broken);
  el.setAttribute('data-overflow', wide ? 1 : 0);
  el.textContent = 'Page check: ' + imgs.length + ' images, ' + broken + ' failed to load'
    + (wide ? '; the page is wider than the window' : '') + '.';
});
"""


def page(title: str, body: str) -> str:
    """The HTML shell shared by the run report, the map page and the contact sheet."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}"
        '<p id="page-check" class="muted" data-broken="-1">Page check: not run (scripts disabled?).</p>'
        f"</main><script>{CHECK_SCRIPT}</script></body></html>\n"
    )
