"""Replays a whole agent run, step by step, into a new run, and stops where it diverges.

The first step is re-sent with the overrides. Each next step is the replay's own history so
far plus the inputs the recorded step added (new user messages, tool results). When the new
response asks for the same tool calls as the recording (a multiset of name and parsed
arguments, ids ignored), the recorded results are fed back under the new tool_call_ids, so
client-side tools never run again; built-in tools run server-side, so they run again (and
are reported). Any other answer is a divergence: the replay stops and says where and how.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.capture.exchange import new_id
from gateway.replay import diff as diffs
from gateway.replay.replayer import Recorded, Replayer, ReplayError, SecretKey
from gateway.runs.grouper import canonical
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.runs import RunStore

STEP_ENDPOINTS = {"chat": "chat", "agents": "chat", "conversations": "conversations"}
MAX_STEPS = 200


def function_calls(recorded: Recorded) -> list[dict[str, Any]]:
    return [c for c in diffs.tool_calls(recorded.parsed) if c["kind"] == "function"]


def id_map(recorded: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> dict[str, str]:
    """Recorded tool_call_id -> the replay's id for the same call (same name and arguments)."""
    left = list(replayed)
    mapping = {}
    for call in recorded:
        twin = next((c for c in left if diffs.call_key(c) == diffs.call_key(call)), None)
        if twin is not None:
            left.remove(twin)
            if call.get("id") and twin.get("id"):
                mapping[str(call["id"])] = str(twin["id"])
    return mapping


def divergence(
    step: int, recorded: list[dict[str, Any]], replayed: list[dict[str, Any]]
) -> str | None:
    """Why the replay's tool calls part from the recording's at this step, or None."""
    if Counter(map(diffs.call_key, recorded)) == Counter(map(diffs.call_key, replayed)):
        return None
    if recorded and not replayed:
        return f"step {step} answered where the recording called tools (a final answer early)"
    if replayed and not recorded:
        return f"step {step} called tools where the recording answered"
    return f"step {step} asked for other tool calls (another tool or other arguments)"


def _assistant(message: dict[str, Any] | None) -> dict[str, Any]:
    message = dict(message or {"role": "assistant", "content": ""})
    if not message.get("tool_calls"):
        message.pop("tool_calls", None)
    return message


class RunReplayer:
    def __init__(self, replayer: Replayer, store: Store, run_store: RunStore) -> None:
        self.replayer = replayer
        self.store = store
        self.run_store = run_store

    async def steps(self, run_id: int) -> list[Recorded]:
        """The run's calls that make its chain, checked to be one linear chain."""
        if await self.run_store.get_run_row(run_id) is None:
            raise ReplayError(404, f"run {run_id} not found")
        items, _ = await self.store.list_exchanges(ExchangeFilter(run=run_id), MAX_STEPS + 1, None)
        chosen = [
            i
            for i in sorted(items, key=lambda i: i.id)
            if i.method == "POST"
            and i.state == "complete"
            and (i.status or 0) < 400
            and i.endpoint in STEP_ENDPOINTS
        ]
        if not chosen:
            raise ReplayError(
                409,
                f"run {run_id} has no replayable step (chat, agents or "
                "conversation calls that succeeded)",
            )
        if len(chosen) > MAX_STEPS:
            raise ReplayError(409, f"run {run_id} has more than {MAX_STEPS} steps")
        kinds = {STEP_ENDPOINTS[i.endpoint] for i in chosen}
        if len(kinds) > 1:
            raise ReplayError(
                409, f"run {run_id} is not one linear chain: it mixes chat and conversation calls"
            )
        kind = kinds.pop()
        steps = [await self.replayer.original(i.id) for i in chosen]
        for index in range(1, len(steps)):
            problem = self._continues(steps[index - 1], steps[index], kind)
            if problem:
                raise ReplayError(
                    409,
                    f"run {run_id} is not one linear chain (several "
                    f"interleaved loops under one name?): step {index} "
                    f"{problem}",
                )
        return steps

    @staticmethod
    def _continues(previous: Recorded, current: Recorded, kind: str) -> str | None:
        if kind == "conversations":
            path = current.item.path
            wanted = f"/v1/conversations/{previous.parsed.conversation_id}"
            if path != wanted:
                return f"does not append to the conversation step {current.item.step} left ({path})"
            return None
        before = [*(previous.parsed.messages_in or []), _assistant(previous.parsed.message_out)]
        now = current.parsed.messages_in or []
        if [canonical(m) for m in now[: len(before)]] != [canonical(m) for m in before]:
            return "does not continue the previous step's messages and reply"
        return None

    async def replay(
        self, run_id: int, overrides: Any, key: SecretKey, steps: list[Recorded] | None = None
    ) -> dict[str, Any]:
        steps = steps or await self.steps(run_id)
        first = await self.replayer.plan(steps[0], overrides if overrides is not None else {})
        overrides = overrides or {}
        new_run = new_id()
        replayed: list[Recorded] = []
        stored_diffs: list[dict[str, Any]] = []
        builtin: list[dict[str, Any]] = []
        diverged: dict[str, Any] | None = None
        mapping: dict[str, str] = {}
        for index, step in enumerate(steps):
            if index == 0:
                path, body = first.path, first.body
            else:
                path, body = self._next(steps[index - 1], step, replayed[-1], overrides, mapping)
            hints = {
                "replay_run": str(new_run),
                "replay_step": str(index),
                "tags": f"replay_of_run={run_id}",
            }
            new = await self.replayer.send(path, body, key, replay_of=step, hints=hints)
            replayed.append(new)
            stored_diffs.append(await self.replayer.diff(step, new, save=True, run_id=new_run))
            builtin += [
                {"step": index, "name": c["name"], "arguments": c["arguments"], "server_side": True}
                for c in diffs.tool_calls(new.parsed)
                if c["kind"] == "builtin"
            ]
            status = new.item.status or 0
            if status >= 400 or new.item.state != "complete":
                diverged = {
                    "step": index,
                    "reason": f"step {index} failed: status {status}, {new.item.state}",
                }
                break
            recorded_calls, new_calls = function_calls(step), function_calls(new)
            reason = divergence(index, recorded_calls, new_calls)
            if reason is not None:
                diverged = {
                    "step": index,
                    "reason": reason,
                    "expected": [diffs._public(c) for c in recorded_calls],
                    "got": [diffs._public(c) for c in new_calls],
                }
                break
            mapping = id_map(recorded_calls, new_calls)
        if diverged is not None:
            diverged.update(
                original_exchange_id=str(steps[diverged["step"]].id),
                exchange_id=str(replayed[-1].id),
            )
        run = await self.run_store.get_run(new_run)
        return {
            "run": run.to_json() if run is not None else None,
            "diffs": stored_diffs,
            "diverged_at": diverged["step"] if diverged else None,
            "divergence": diverged,
            "original_run_id": str(run_id),
            "steps_recorded": len(steps),
            "steps_replayed": len(replayed),
            "server_side_tools": builtin,
        }

    def _next(
        self,
        previous: Recorded,
        step: Recorded,
        last: Recorded,
        overrides: dict[str, Any],
        mapping: dict[str, str],
    ) -> tuple[str, dict[str, Any]]:
        """The request of a later step: the replay's history plus what the recording added."""
        recorded = step.parsed.request_json
        replay = self.replayer.replay_of(step)
        if step.item.endpoint == "conversations":
            path = replay.append_path(last.parsed.conversation_id or "")
            if path is None:
                raise ReplayError(502, "the replayed conversation has no usable id")
            return path, replay.append_body(recorded, overrides, mapping)
        before = len(previous.parsed.messages_in or []) + 1
        added = replay.remap_tool_results((step.parsed.messages_in or [])[before:], mapping)
        history = [*(last.parsed.messages_in or []), _assistant(last.parsed.message_out)]
        path = step.item.path
        return path, replay.chat_body(recorded, path, overrides, history + added)
