"""Campaigns: a judge run over a saved search of recorded calls, the way Mistral's
Observability campaigns run one over filtered events.

A campaign names its judge (a stored judge, or a built-in scorer that needs no expected
output, or a scorer spec), a filter (the /api/exchanges parameters plus `agent`; `since`
may be relative, `7d`, `24h`, `30m`), a sample size (`max_nb_events`) and a mode: `batch`
scores a random sample of the matching calls once; `live` scores each new matching call as
it is recorded, polling for new exchange ids in a background task of the process serving
the UI (never a proxy worker, never on a proxy call's path) until it has scored
`max_nb_events` or is deleted. Scores are evaluations of the calls they judge, their detail
naming the campaign. Judge calls use the gateway's replay key and land in runs of their own
(source `evaluator`, gateway/replay/judge.py); calls the gateway made itself (`replay_of`
set: judges, replays, experiments) are never selected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.capture.exchange import first_id_at
from gateway.errors import NotFound, UserError
from gateway.replay import scorers
from gateway.replay.evaluator import CALLS, NEEDS_EXPECTED, Evaluator
from gateway.replay.judge import EMBEDDING_MODEL, EmbeddingCosine, GatewayCaller, Judge
from gateway.replay.replayer import ReplayError, SecretKey
from gateway.store.campaigns import CampaignRow, CampaignStore
from gateway.store.exchanges import ExchangeFilter
from gateway.store.query import EXCHANGE_FILTER_FIELDS, exchange_filter, parse_text
from gateway.store.records import ExchangeSummary

log = logging.getLogger("agentops.campaigns")

FIELDS = {"name", "description", "judge", "filter", "max_nb_events", "mode"}
FILTER_FIELDS = EXCHANGE_FILTER_FIELDS | {"agent"}
MODES = ("batch", "live")
MAX_EVENTS = 10_000
MAX_CANDIDATES = 50_000  # a batch samples from at most this many matching calls
PAGE = 500
LOOKBACK_SECONDS = 900.0  # longer than any call lasts (see --upstream-timeout)
RELATIVE = re.compile(r"^(\d{1,5})([mhd])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def resolve(
    search: dict[str, str], now: datetime | None = None
) -> tuple[ExchangeFilter, str | None]:
    """The stored filter as an ExchangeFilter (a relative `since` counted back from now)
    and the agent; a bad value is a UserError naming it."""
    values = dict(search)
    since = values.get("since") or ""
    found = RELATIVE.match(since.strip())
    if found:
        delta = timedelta(**{UNITS[found.group(2)]: int(found.group(1))})
        values["since"] = ((now or datetime.now(UTC)) - delta).isoformat()
    return exchange_filter(values), parse_text("agent", values.get("agent"))


def check_filter(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError("filter must be an object of /api/exchanges parameters")
    unknown = sorted(set(raw) - FILTER_FIELDS)
    if unknown:
        raise UserError(f"unknown filter field(s): {', '.join(unknown)} ({sorted(FILTER_FIELDS)})")
    search = {}
    for key, value in raw.items():
        if value is None or value == "":
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        if not isinstance(value, str | int):
            raise UserError(f"filter.{key} must be a string")
        search[key] = str(value)
    resolve(search)  # a bad value is a 400 now
    return search


class Campaigns:
    """Creates campaigns and runs them: one task per running campaign."""

    poll_seconds = 2.0

    def __init__(self, store: CampaignStore, evaluator: Evaluator, key: SecretKey | None) -> None:
        self.store = store
        self.evaluator = evaluator
        self.key = key
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.running = False  # only in the process that runs campaigns (see start)

    async def start(self) -> None:
        """Resume the campaigns left running (after a restart)."""
        self.running = True
        for campaign in await self.store.running():
            self._launch(campaign)

    async def stop(self) -> None:
        self.running = False
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()

    async def create(self, body: Any) -> CampaignRow:
        if not isinstance(body, dict):
            raise UserError("a campaign must be a JSON object")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise UserError(f"unknown field(s): {', '.join(unknown)} (accepted: {sorted(FIELDS)})")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise UserError("name must be a non-empty string of at most 200 characters")
        description = body.get("description") or ""
        if not isinstance(description, str):
            raise UserError("description must be a string")
        mode = body.get("mode", "batch")
        if mode not in MODES:
            raise UserError(f"mode must be batch or live, got {mode!r}")
        size = body.get("max_nb_events")
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_EVENTS:
            raise UserError(f"max_nb_events must be an integer from 1 to {MAX_EVENTS}")
        search = check_filter(body.get("filter"))
        spec = await self._spec(body.get("judge"))
        if spec["type"] in scorers.CALLING:
            self._key()  # a 400 now, not a failure per call later
        seen = 0
        if mode == "live":  # only calls recorded from now on
            newest, _ = await self.evaluator.source.store.list_exchanges(ExchangeFilter(), 1, None)
            seen = newest[0].id if newest else 0
        campaign = await self.store.add(name.strip(), description, spec, search, size, mode, seen)
        if self.running:
            self._launch(campaign)
        return campaign

    async def delete(self, campaign_id: int) -> None:
        await self.store.delete(campaign_id)
        task = self.tasks.pop(campaign_id, None)
        if task is not None:
            task.cancel()

    async def _spec(self, judge: Any) -> dict[str, Any]:
        """A stored judge's name or a built-in scorer's, or a scorer spec."""
        if isinstance(judge, str) and judge:
            if judge in scorers.BUILT_IN:
                spec: dict[str, Any] = {"type": judge}
            else:
                await self.evaluator.judges.get(judge)  # 404 when unknown
                spec = {"type": "judge", "judge": judge}
        elif isinstance(judge, dict):
            spec = scorers.check_spec(judge)
        else:
            raise UserError(
                "judge must name a stored judge or a built-in scorer, or be a scorer spec"
            )
        no_value = spec["type"] == "contains" and spec.get("value") is None
        if spec["type"] in (*NEEDS_EXPECTED, "tool_calls") or no_value:
            raise UserError(f"{spec['type']} needs an expected output: recorded calls have none")
        if spec["type"] == "judge":
            await self.evaluator.definition(spec)
        elif spec["type"] not in scorers.CALLING:
            scorers.make(spec)
        return spec

    def _key(self) -> SecretKey:
        try:
            return self.evaluator.replayer.key(None)
        except ReplayError:  # its advice of a per-request "api_key" does not apply here
            raise UserError(
                "no API key for the judge's calls: set AGENTOPS_REPLAY_API_KEY (or "
                "MISTRAL_API_KEY) in the gateway's environment (campaigns run in the "
                "background, with the gateway's replay key only)"
            ) from None

    def _launch(self, campaign: CampaignRow) -> None:
        run = self._batch if campaign.mode == "batch" else self._live
        task = asyncio.create_task(run(campaign), name=f"agentops-campaign-{campaign.id}")
        self.tasks[campaign.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(campaign.id, None))

    async def _batch(self, campaign: CampaignRow) -> None:
        try:
            if campaign.selected == 0 and campaign.seen_id == 0:
                found = await self._matching(campaign, None)
                chosen = sorted(random.sample(found, min(len(found), campaign.max_nb_events)))
                if not await self.store.claim(campaign, len(chosen), max(found, default=1)):
                    return  # another replica runs it
            else:  # resumed: the calls it has not judged yet
                chosen = await self._unjudged(campaign)
            for exchange_id in chosen:
                if not await self._judge(campaign, exchange_id):
                    return
            await self.store.finish(campaign.id, "done")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("campaign %s failed", campaign.id)
            await self.store.finish(campaign.id, "failed", f"{type(exc).__name__}: {exc}")

    async def _live(self, campaign: CampaignRow) -> None:
        try:
            while campaign.selected < campaign.max_nb_events:
                if not await self._poll(campaign):
                    await asyncio.sleep(self.poll_seconds)
                campaign = await self.store.get(campaign.id)  # 404 once deleted: stops
            await self.store.finish(campaign.id, "done")
        except asyncio.CancelledError:
            raise
        except NotFound:
            return  # deleted
        except Exception as exc:
            log.exception("campaign %s failed", campaign.id)
            await self.store.finish(campaign.id, "failed", f"{type(exc).__name__}: {exc}")

    async def _poll(self, campaign: CampaignRow) -> bool:
        """Judge the matching calls recorded since the last look; True if it judged one.
        A call is recorded when it ends, so one that started long ago may appear after newer
        ones: each look covers the calls started in the last LOOKBACK_SECONDS (and after the
        campaign began), skipping those taken already."""
        low = max(campaign.seen_id, first_id_at(time.time() - LOOKBACK_SECONDS))
        found = sorted(await self._matching(campaign, low))
        taken = await self.store.taken(campaign.id, found)
        judged = False
        for exchange_id in (i for i in found if i not in taken):
            if not await self.store.take(campaign, exchange_id):
                current = await self.store.get(campaign.id)
                if current.selected >= current.max_nb_events:
                    break
                continue  # another replica took it
            judged = True
            if not await self._judge(campaign, exchange_id):
                break
        return judged

    async def _matching(self, campaign: CampaignRow, after: int | None) -> list[int]:
        """Ids of the recorded calls the campaign's filter selects (newer than `after`):
        finished chat, agents or conversations calls the gateway did not make itself."""
        search, agent = resolve(campaign.search)
        source = self.evaluator.source
        found: list[int] = []
        before = None
        while len(found) < MAX_CANDIDATES:
            page, before = await source.store.list_exchanges(search, PAGE, before, after)
            found += await self._eligible(page, agent)
            if before is None:
                break
        return found

    async def _eligible(self, page: list[ExchangeSummary], agent: str | None) -> list[int]:
        ok = [
            e
            for e in page
            if e.endpoint in CALLS and e.replay_of is None and e.state not in ("pending",)
        ]
        runs = await self.evaluator.source.runs.names(e.run_id for e in ok if e.run_id)
        keep = []
        for e in ok:
            run = runs.get(e.run_id) if e.run_id else None
            if run is not None and run.get("source") == "evaluator":
                continue
            if agent is not None and (run is None or run.get("agent_id") != agent):
                continue
            keep.append(e.id)
        return keep

    async def _unjudged(self, campaign: CampaignRow) -> list[int]:
        """A resumed batch: the sample is not kept, so it judges as many matching calls as
        were left, among those this campaign has not judged."""
        done = campaign.scored + campaign.failed
        found = await self._matching(campaign, None)
        rows = await self.evaluator.source.store.rows(
            "SELECT exchange_id, detail FROM evaluations WHERE detail LIKE ?",
            [f'%"campaign_id":"{campaign.id}"%'],
        )
        judged = {int(r["exchange_id"]) for r in rows if r["exchange_id"] is not None}
        left = [i for i in found if i not in judged]
        return sorted(random.sample(left, min(len(left), campaign.selected - done)))

    async def _judge(self, campaign: CampaignRow, exchange_id: int) -> bool:
        """Score one call; False when the campaign was deleted meanwhile."""
        if not await self.store.exists(campaign.id):
            return False
        tag = {"campaign_id": str(campaign.id), "campaign": campaign.name}
        try:
            scorer = await self._make(campaign, exchange_id)
            value: float | None = await self.evaluator.score_call(exchange_id, scorer, tag)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("campaign %s: exchange %s not scored: %s", campaign.id, exchange_id, exc)
            value = None
        await self.store.count_score(campaign.id, value)
        return True

    async def _make(self, campaign: CampaignRow, exchange_id: int) -> scorers.Scorer:
        spec = campaign.judge
        if spec["type"] not in scorers.CALLING:
            return scorers.make(spec)
        caller = GatewayCaller(self.evaluator.replayer, self._key())
        if spec["type"] == "judge":
            return Judge(await self.evaluator.definition(spec), caller, exchange_id)
        return EmbeddingCosine(str(spec.get("model") or EMBEDDING_MODEL), caller, exchange_id)
