"""Bots told apart from people by their User-Agent (crawlerdetect's patterns)."""

from __future__ import annotations

import re
from functools import cache

from crawlerdetect import CrawlerDetect


@cache
def _crawlers() -> CrawlerDetect:
    return CrawlerDetect()  # compiles its patterns once per process


# crawlerdetect's patterns take time that grows with the square of a run of word
# characters: an 8 KB User-Agent of one letter blocks a worker for seconds. No browser
# sends such a thing, so it is taken for a bot without asking crawlerdetect.
CRAWLER_CHECK_UA_MAX = 512
LONG_WORD = re.compile(r"[A-Za-z0-9_-]{65}")
# Link previews crawlerdetect 0.4 does not know: Bluesky's cards, KakaoTalk's, and
# Google's safety check under its bare name.
UNKNOWN_TO_CRAWLERDETECT = re.compile(r"\bCardyb/|\bkakaotalk-scrap/|^Google-Safety$")


def is_crawler(user_agent: str | None) -> bool:
    """Link previews (WhatsApp, Facebook, Telegram), search engines, headless browsers
    and HTTP libraries name themselves; every phone's browser names itself too, so a
    request that names nothing is a script."""
    if not user_agent or not user_agent.strip():
        return True
    if len(user_agent) > CRAWLER_CHECK_UA_MAX or LONG_WORD.search(user_agent):
        return True
    return bool(UNKNOWN_TO_CRAWLERDETECT.search(user_agent)) or _crawlers().isCrawler(user_agent)


# A whole browser's User-Agent ("Mozilla/5.0 (…) AppleWebKit/…") carrying an app's name,
# which crawlerdetect knows as the name of that app's link previews: the app's own
# browser (an in-app WebView, Slack's desktop app), where a shared link is opened.
IN_APP_NAME = re.compile(r"(?<=[\s)])(WhatsApp|Slack)/[\w.]+")
WHOLE_BROWSER = re.compile(r"^Mozilla/5\.0 \([^)]*\) AppleWebKit/")


def is_bot_browser(user_agent: str | None) -> bool:
    """Whether the browser a page runs in, or a scanned code opens, is a bot's (Googlebot
    rendering it, Lighthouse, HeadlessChrome): a crawler, but for an app's own browser
    named after the app."""
    if user_agent and WHOLE_BROWSER.match(user_agent):
        user_agent = IN_APP_NAME.sub("", user_agent)
    return is_crawler(user_agent)
