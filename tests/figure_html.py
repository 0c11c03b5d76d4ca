"""Reading a figure's static HTML form back, for the tests of every figure module."""

from __future__ import annotations

import json
import re


def payload(html: str) -> dict:
    """The JSON a static figure embeds (its frames and the index of states to frames)."""
    match = re.search(r'<script type="application/json" class="bnfig-data">(.*?)</script>', html)
    assert match, "the static form must embed its frames as JSON"
    return json.loads(match.group(1).replace("<\\/", "</"))
