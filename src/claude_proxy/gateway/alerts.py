"""Budget alerts: a webhook message (Slack-compatible JSON) when a level's spend crosses
50 %, 80 % and 100 % of its budget, once per period however many replicas see it.

Each replica compares the spend it already knows (the limiter's snapshot, read every
second anyway) with every budget it knows: keys', users', groups' and the
organisation's. A crossing is claimed in the database (store/alerts.py): the one
replica whose insert wins writes the audit row and sends the message; a message that
could not be sent is claimed again and retried after `reclaim_after`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from claude_proxy.gateway.levels import Level
from claude_proxy.gateway.limits import Limiter
from claude_proxy.store.alerts import Alert, claim, claimed, mark_sent, reclaim
from claude_proxy.store.columns import current_period

log = logging.getLogger("claude_proxy.alerts")

THRESHOLDS = (50, 80, 100)
_TIMEOUT = 10.0


class BudgetAlerts:
    """Checks every `interval` seconds; built once by wiring.py."""

    def __init__(
        self,
        *,
        engine: Engine,
        limiter: Limiter,
        levels: Callable[[], Iterable[Level]],
        webhook_url: str | None,
        counted: Callable[[str], None] = lambda outcome: None,
        interval: float = 5.0,
        reclaim_after: float = 60.0,
    ) -> None:
        self._engine = engine
        self._limiter = limiter
        self._levels = levels
        self._url = webhook_url
        self._counted = counted  # the outcome of each crossing (a metric)
        self._interval = interval
        self._reclaim_after = timedelta(seconds=reclaim_after)
        self._known: set[Alert] = set()  # claimed by someone already: never asked again
        self._loaded_periods: set[str] = set()
        self._details: dict[Alert, str] = {}  # the message of an alert this replica owns
        self._next_reclaim = 0.0  # unix time of the next look for alerts left unsent

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check(time.time())
            except Exception as exc:  # the database is down: try again next round
                log.warning("budget alerts: check failed (%s)", type(exc).__name__)

    def crossings(self, now: float) -> list[tuple[Alert, Level, float]]:
        """Every threshold crossed now that is not known to be claimed: (alert, level, spent)."""
        found = []
        at = datetime.fromtimestamp(now, tz=UTC)
        for level in self._levels():
            if level.budget_usd is None:
                continue
            period_kind = level.budget_period or "total"
            spent = self._limiter.spent(level.id, period_kind, now)
            period = current_period(period_kind, at)
            for threshold in THRESHOLDS:
                if level.budget_usd <= 0:
                    crossed = spent > 0 or threshold == 100
                else:
                    crossed = spent * 100 >= threshold * level.budget_usd
                alert = Alert(level.id, period, threshold)
                if crossed and alert not in self._known:
                    found.append((alert, level, spent))
        return found

    async def check(self, now: float) -> int:
        """One round: claim what crossed, send what this replica owns; the number sent."""
        self._forget_past_periods(now)
        found = self.crossings(now)
        periods = {a.period for a, _, _ in found} - self._loaded_periods
        if periods:  # after a restart: what others (or we) claimed already
            self._known |= await asyncio.to_thread(claimed, self._engine, sorted(periods))
            self._loaded_periods |= periods
            for alert, _, _ in found:
                if alert in self._known:
                    self._counted("taken")
            found = [f for f in found if f[0] not in self._known]
        instance = self._limiter.instance_id
        mine: list[Alert] = []
        for alert, level, spent in found:
            details = {
                "level": level.kind,
                "name": level.name,
                "spent_usd": round(spent, 6),
                "budget_usd": level.budget_usd,
            }
            won = await asyncio.to_thread(
                claim, self._engine, alert, instance=instance, details=details
            )
            self._known.add(alert)
            self._counted("claimed" if won else "taken")
            if won:
                self._details[alert] = _message(alert, level, spent)
                mine.append(alert)
        if now >= self._next_reclaim:  # rare: an owner died, or the webhook was down
            self._next_reclaim = now + self._reclaim_after.total_seconds() / 2
            mine += await asyncio.to_thread(
                reclaim, self._engine, instance=instance, reclaim_after=self._reclaim_after
            )
        sent = 0
        for alert in mine:
            if await self._send(alert):
                await asyncio.to_thread(mark_sent, self._engine, alert)
                self._details.pop(alert, None)
                self._counted("sent")
                sent += 1
        return sent

    def _forget_past_periods(self, now: float) -> None:
        """What was claimed in a day, week or month that has ended is never asked again."""
        at = datetime.fromtimestamp(now, tz=UTC)
        current = {current_period(kind, at) for kind in ("day", "week", "month", "total")}
        if self._loaded_periods - current:
            self._known = {a for a in self._known if a.period in current}
            self._loaded_periods &= current

    async def _send(self, alert: Alert) -> bool:
        """Post the message; True once the webhook took it (or there is no webhook)."""
        if not self._url:
            return True
        import httpx  # only here: most processes never send an alert (~5 MB)

        text = self._details.get(alert) or (
            f"claude-proxy: budget of {alert.level_id} reached {alert.threshold}% ({alert.period})"
        )
        try:
            async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
                resp = await client.post(self._url, json={"text": text})
        except httpx.HTTPError as exc:
            log.warning("budget alert not delivered (%s); retried later", type(exc).__name__)
            return False
        if resp.status_code >= 300:
            log.warning(
                "budget alert refused by the webhook (HTTP %d); retried later", resp.status_code
            )
            return False
        return True


def _message(alert: Alert, level: Level, spent: float) -> str:
    budget = level.budget_usd or 0.0
    who = "The organisation" if level.kind == "org" else f"{level.kind.capitalize()} {level.name}"
    period = alert.period.split(":", 1)[-1] if ":" in alert.period else "in total"
    verb = "has used all of" if alert.threshold >= 100 else f"has used {alert.threshold}% of"
    return f"claude-proxy: {who} {verb} its budget for {period}: ${spent:,.2f} of ${budget:,.2f}."
