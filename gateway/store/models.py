"""The database schema, as Tortoise models; migrations in gateway/migrations are made from it.

Exchanges hold the indexed, extracted columns the list and dashboards query; the bulky
headers and bodies live in exchange_bodies so list scans stay small (simonw/llm's layout).
Indexes for the list filters are composite (filter, id) and partial where a value is rare:
see migrations/0002_indexes_and_search.py and 0021_fewer_index_writes.py.
"""

from tortoise import fields
from tortoise.models import Model


class Exchange(Model):
    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    started_at = fields.DatetimeField()
    provider = fields.CharField(max_length=32, default="mistral")
    method = fields.CharField(max_length=16)
    path = fields.TextField()
    client_path = fields.TextField()
    query = fields.TextField(default="")
    status = fields.IntField(null=True)
    model = fields.CharField(max_length=200, null=True)
    request_model = fields.CharField(max_length=200, null=True)
    endpoint = fields.CharField(max_length=32)
    streamed = fields.BooleanField(default=False)
    state = fields.CharField(max_length=32)
    error = fields.TextField(null=True)  # set for every failed call: see capture/failure.py
    error_type = fields.CharField(max_length=64, null=True)  # the upstream's, or ours
    error_code = fields.CharField(max_length=64, null=True)
    prompt_tokens = fields.IntField(null=True)
    completion_tokens = fields.IntField(null=True)
    total_tokens = fields.IntField(null=True)
    cached_tokens = fields.IntField(null=True)
    connector_tokens = fields.IntField(null=True)
    units = fields.TextField(null=True)  # JSON: pages, audio_seconds, characters
    finish_reason = fields.CharField(max_length=64, null=True)
    output_text = fields.TextField(null=True)
    cost_usd = fields.FloatField(null=True)
    # what the cost is for: llm, tool, fine-tuning (the provider decides: capture/rows.py)
    category = fields.CharField(max_length=16, default="llm", db_default="llm")
    latency_ms = fields.FloatField(null=True)
    ttfb_ms = fields.FloatField(null=True)
    ttft_ms = fields.FloatField(null=True)
    correlation_id = fields.CharField(max_length=200, null=True)  # found by search
    key_fingerprint = fields.CharField(max_length=64, null=True)
    truncated = fields.BooleanField(default=False)
    parse_error = fields.BooleanField(default=False)
    omitted = fields.BooleanField(default=False)
    run_id = fields.BigIntField(null=True)
    replay_of = fields.BigIntField(null=True)
    run_source = fields.CharField(max_length=16, null=True)  # the rule that placed it in its run
    step = fields.IntField(null=True)  # 0-based position in its run
    parent_id = fields.BigIntField(null=True)  # the exchange it continues (automatic threading)
    thread_key = fields.CharField(max_length=32, null=True)  # hash of its messages + reply
    # JSON {"field": original length} of values clipped to fit (see gateway/capture/storable.py)
    clipped = fields.TextField(null=True)
    # what the list shows of the call (its provider's preview, at most 300 characters; "" for
    # none), made once by the writer so pages never re-read bodies; null in older rows
    preview = fields.TextField(null=True)

    class Meta:
        table = "exchanges"


class ExchangeBody(Model):
    """Headers and bodies. An exchange's headers, bodies and output text are one zstd frame
    (`data`); a step that extends its run's previous one is a delta against that exchange's
    frame (`data_base`): see gateway/store/bodies.py. Rows from before hold them as text
    (`*_headers`, `*_body`, `exchanges.output_text`) instead."""

    exchange_id = fields.BigIntField(primary_key=True)
    request_headers = fields.TextField()  # JSON list of [name, value], redacted ("": in data)
    request_body = fields.TextField(null=True)  # older rows: the body as the API shows it
    request_body_encoding = fields.CharField(max_length=8)  # json, text, base64, digest, omitted
    response_headers = fields.TextField()
    response_body = fields.TextField(null=True)
    response_body_encoding = fields.CharField(max_length=8)
    data = fields.BinaryField(null=True)  # zstd frame: headers, bodies, output text
    data_base = fields.BigIntField(null=True)  # the exchange whose frame it is a delta against

    class Meta:
        table = "exchange_bodies"


class Run(Model):
    """One agent task: the exchanges that belong together, assembled from the traffic."""

    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    name = fields.CharField(max_length=200, null=True)
    agent_id = fields.CharField(max_length=200, null=True)
    user = fields.CharField(max_length=200, null=True)
    tags = fields.TextField(null=True)  # JSON object
    source = fields.CharField(max_length=16)  # prefix, header, conversation, thread, single
    started_at = fields.DatetimeField()
    last_seen_at = fields.DatetimeField()
    ended_at = fields.DatetimeField(null=True)
    status = fields.CharField(max_length=16, default="running")  # running, ok, error
    last_failed = fields.BooleanField(default=False)
    exchange_count = fields.IntField(default=0)
    prompt_tokens = fields.BigIntField(default=0)
    completion_tokens = fields.BigIntField(default=0)
    total_tokens = fields.BigIntField(default=0)
    total_cost_usd = fields.FloatField(default=0)  # the priced calls' costs
    error_count = fields.IntField(default=0, db_default=0)  # failed calls
    unpriced_calls = fields.IntField(default=0, db_default=0)  # calls with no price (not $0)
    config = fields.TextField(null=True)  # JSON: model and sampling params of the first call
    # Steps numbered so far: the next step's number. Unlike exchange_count it never goes down
    # (an exchange deleted from a run), so writers of several replicas never reuse a step.
    steps = fields.IntField(default=0, db_default=0)
    # conversation_ids are not stored here: run_conversations holds them, one row each.

    class Meta:
        table = "runs"
        # (name, id), (agent_id, id) and ("user", id) are partial: migrations/0021
        indexes = (("ended_at", "id"),)


class RunConversation(Model):
    conversation_id = fields.CharField(max_length=200, primary_key=True)
    run_id = fields.BigIntField(db_index=True)

    class Meta:
        table = "run_conversations"


class Message(Model):
    """A message as it first appeared in a run (inputs new at that step, and the output)."""

    id = fields.BigIntField(primary_key=True)
    run_id = fields.BigIntField()
    exchange_id = fields.BigIntField(db_index=True)
    step = fields.IntField()
    position = fields.IntField()
    direction = fields.CharField(max_length=4)  # in, out
    role = fields.CharField(max_length=32, null=True)
    content = fields.TextField(null=True)  # JSON
    tool_calls = fields.TextField(null=True)  # JSON
    tool_call_id = fields.CharField(max_length=200, null=True)
    finish_reason = fields.CharField(max_length=64, null=True)
    prompt_tokens = fields.IntField(null=True)
    completion_tokens = fields.IntField(null=True)
    # Where content (and tool_calls) are read from instead of being copied: null (they are
    # here), "request" (the exchange's request body, message `position`), "output" (content is
    # the exchange's output_text). See gateway/store/run_refs.py.
    content_from = fields.CharField(max_length=8, null=True)

    class Meta:
        table = "messages"
        indexes = (("run_id", "step", "position"),)


class ToolCall(Model):
    id = fields.BigIntField(primary_key=True)
    run_id = fields.BigIntField()
    exchange_id = fields.BigIntField(db_index=True)
    step = fields.IntField()
    call_id = fields.CharField(max_length=200, null=True)
    tool_name = fields.CharField(max_length=200, null=True)
    kind = fields.CharField(max_length=16)  # function, builtin, handoff
    args = fields.TextField(null=True)  # JSON (parsed arguments, or the raw string)
    return_value = fields.TextField(null=True)
    result_exchange_id = fields.BigIntField(null=True)
    asked_at_ms = fields.FloatField(null=True)  # when the asking response ended (Unix ms)
    latency_ms = fields.FloatField(null=True)

    class Meta:
        table = "tool_calls"
        indexes = (("run_id", "call_id"),)


class MemorySnapshot(Model):
    """The state carried forward after a step, stored as a delta: the first `carried` items of
    the previous step's state, then `appended`. Shared prefixes are never copied again."""

    id = fields.BigIntField(primary_key=True)
    run_id = fields.BigIntField()
    exchange_id = fields.BigIntField(db_index=True)
    step = fields.IntField()
    taken_at = fields.DatetimeField()
    carried = fields.IntField()
    appended = fields.TextField()  # JSON list
    # null: `appended` holds the items; "exchange": they are the exchange's request messages
    # from position `carried` on, then its output message (`appended` is []).
    appended_from = fields.CharField(max_length=8, null=True)
    # null: the step's new input messages are rows of `messages`; "request": they are not
    # stored, being exactly its request's messages from position `carried` on (run_refs.py).
    inputs_from = fields.CharField(max_length=8, null=True)

    class Meta:
        table = "memory_snapshots"
        indexes = (("run_id", "step"),)


class Evaluation(Model):
    id = fields.BigIntField(primary_key=True)
    run_id = fields.BigIntField(null=True, db_index=True)
    exchange_id = fields.BigIntField(null=True, db_index=True)
    metric_name = fields.CharField(max_length=200)
    metric_value = fields.FloatField()
    created_at = fields.DatetimeField()
    # JSON, for scores an evaluator made: a judge's analysis and answer, the exchange id and
    # cost of its call (gateway/replay/judge.py); null for scores posted by hand
    detail = fields.TextField(null=True)

    class Meta:
        table = "evaluations"


class Rollup(Model):
    """Per-hour totals for the dashboard, kept by the writer: see gateway/store/rollups.py.

    One row per (dim, hour, value): dim is model, provider, nomodel, run (name) or agent;
    hour counts hours since the Unix epoch; h00..h19 count calls per latency bucket
    (rollups.BOUNDS)."""

    id = fields.BigIntField(primary_key=True)
    dim = fields.CharField(max_length=8)
    hour = fields.BigIntField()
    value = fields.CharField(max_length=200)
    calls = fields.BigIntField(default=0)
    errors = fields.BigIntField(default=0)
    unpriced = fields.BigIntField(default=0)  # successful calls of a model with no price
    prompt_tokens = fields.BigIntField(default=0)
    completion_tokens = fields.BigIntField(default=0)
    total_tokens = fields.BigIntField(default=0)
    cost_usd = fields.FloatField(default=0)
    latency_count = fields.BigIntField(default=0)
    latency_sum = fields.FloatField(default=0)
    # calls cut by a kill of the gateway; db_default: rows from before 0009 get 0 too
    interrupted = fields.BigIntField(default=0, db_default=0)
    h00 = fields.BigIntField(default=0)
    h01 = fields.BigIntField(default=0)
    h02 = fields.BigIntField(default=0)
    h03 = fields.BigIntField(default=0)
    h04 = fields.BigIntField(default=0)
    h05 = fields.BigIntField(default=0)
    h06 = fields.BigIntField(default=0)
    h07 = fields.BigIntField(default=0)
    h08 = fields.BigIntField(default=0)
    h09 = fields.BigIntField(default=0)
    h10 = fields.BigIntField(default=0)
    h11 = fields.BigIntField(default=0)
    h12 = fields.BigIntField(default=0)
    h13 = fields.BigIntField(default=0)
    h14 = fields.BigIntField(default=0)
    h15 = fields.BigIntField(default=0)
    h16 = fields.BigIntField(default=0)
    h17 = fields.BigIntField(default=0)
    h18 = fields.BigIntField(default=0)
    h19 = fields.BigIntField(default=0)

    class Meta:
        table = "rollups"
        unique_together = (("dim", "hour", "value"),)


class Diff(Model):
    """Two exchanges compared (a replay and its original, or any two): the plan's Diffs table.
    The indexed facts are columns; the word-level ops, tool-call and usage deltas are JSON."""

    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    a = fields.BigIntField(db_index=True)  # the "before" exchange
    b = fields.BigIntField(db_index=True)  # the "after" exchange
    run_id = fields.BigIntField(null=True, db_index=True)  # the replay run it belongs to
    created_at = fields.DatetimeField()
    identical = fields.BooleanField()
    similarity = fields.FloatField()
    parameter_changed = fields.TextField()  # JSON list of {field, before, after}
    before_output = fields.TextField(null=True)
    after_output = fields.TextField(null=True)
    diff_json = fields.TextField()  # JSON: ops, tool_calls, deltas

    class Meta:
        table = "diffs"


class Experiment(Model):
    """A set of exchanges replayed with one set of overrides, in the background."""

    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    created_at = fields.DatetimeField()
    finished_at = fields.DatetimeField(null=True)
    status = fields.CharField(max_length=16)  # running, done, interrupted
    selection = fields.TextField()  # JSON: exchange_ids, filter or run_id, as asked
    overrides = fields.TextField()  # JSON object
    repeat = fields.IntField(default=1)
    concurrency = fields.IntField(default=4)
    total = fields.IntField(default=0)

    class Meta:
        table = "experiments"


class ExperimentRow(Model):
    """One replay of an experiment: the original, its replay, their diff and the deltas."""

    id = fields.BigIntField(primary_key=True)
    experiment_id = fields.BigIntField()
    position = fields.IntField()
    repeat_index = fields.IntField(default=0)
    exchange_id = fields.BigIntField()
    replay_id = fields.BigIntField(null=True)
    diff_id = fields.BigIntField(null=True)
    status = fields.CharField(max_length=16)  # pending, ok, error, skipped
    error = fields.TextField(null=True)
    similarity = fields.FloatField(null=True)
    identical = fields.BooleanField(null=True)
    tool_calls_before = fields.IntField(null=True)
    tool_calls_differing = fields.IntField(null=True)
    tokens_before = fields.IntField(null=True)
    tokens_after = fields.IntField(null=True)
    cost_before = fields.FloatField(null=True)
    cost_after = fields.FloatField(null=True)
    latency_before = fields.FloatField(null=True)
    latency_after = fields.FloatField(null=True)
    output_hash = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "experiment_rows"
        indexes = (("experiment_id", "position", "repeat_index"),)


class RunName(Model):
    """An open named run (`/r/NAME` or X-AgentOps-Run), shared by every writer of every
    replica: claimed by name in one statement per write batch (gateway/store/grouping.py), so
    two replicas never make two runs of one name. `last_at` is the latest start (Unix seconds)
    of its calls; a call starting more than --run-idle after it starts a new run."""

    name = fields.CharField(max_length=200, primary_key=True)
    run_id = fields.BigIntField()
    started_at = fields.FloatField()  # the first start of its open run (Unix seconds)
    last_at = fields.FloatField()

    class Meta:
        table = "run_names"


class RunOrphan(Model):
    """A step placed without its parent (it waited HOLD_SECONDS for it): the thread key of
    the call it continues, how many of its input messages that call's state holds, and the
    tool results it sent (JSON), linked when that call is stored (gateway/store/merging.py)."""

    exchange_id = fields.BigIntField(primary_key=True)
    parent_key = fields.CharField(max_length=32, db_index=True)
    carried = fields.IntField(default=0)
    results = fields.TextField(null=True)
    at = fields.FloatField(db_index=True)  # when it was stored (the sweep looks at the latest)

    class Meta:
        table = "run_orphans"


class RunMerge(Model):
    """A run merged into another (its steps' late parent was stored): where it went."""

    run_id = fields.BigIntField(primary_key=True)
    into_run_id = fields.BigIntField()
    at = fields.FloatField()

    class Meta:
        table = "run_merges"


class NodeLease(Model):
    """Which process holds which 10-bit node of exchange ids (gateway/capture/exchange.py):
    claimed at start, renewed while it runs, released at exit, so ids stay unique across
    processes, forked workers and replicas."""

    node = fields.IntField(primary_key=True)
    holder = fields.CharField(max_length=200)
    expires_at = fields.FloatField()  # Unix seconds

    class Meta:
        table = "node_leases"


class Dataset(Model):
    """A named, versioned set of items (see gateway/store/datasets.py): `version` is the
    latest; every earlier one stays readable from the items' added_in / removed_in."""

    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    name = fields.CharField(max_length=200, unique=True)
    description = fields.TextField(default="")
    version = fields.IntField(default=0)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "datasets"


class DatasetVersion(Model):
    """What made each version of a dataset: its source and how many items came and went."""

    id = fields.BigIntField(primary_key=True)
    dataset_id = fields.BigIntField()
    version = fields.IntField()
    created_at = fields.DatetimeField()
    source = fields.CharField(max_length=16)  # created, exchanges, runs, filter, items, removed
    added = fields.IntField(default=0)
    removed = fields.IntField(default=0)
    item_count = fields.IntField(default=0)

    class Meta:
        table = "dataset_versions"
        unique_together = (("dataset_id", "version"),)


class DatasetItem(Model):
    """One item, stored once: in every version from `added_in` up to (not including)
    `removed_in`. Input, expected output and metadata are JSON."""

    id = fields.BigIntField(primary_key=True)
    dataset_id = fields.BigIntField()
    added_in = fields.IntField()
    removed_in = fields.IntField(null=True)
    input = fields.TextField()  # {"messages", "tools"?, "parameters"?}
    expected_output = fields.TextField(null=True)
    metadata = fields.TextField()
    source_exchange_id = fields.BigIntField(null=True)
    source_run_id = fields.BigIntField(null=True)

    class Meta:
        table = "dataset_items"
        indexes = (("dataset_id", "id"),)


class Judge(Model):
    """An LLM judge, kept as defined: Mistral's Observability judge shape (see
    gateway/replay/judge.py), so it exports to La Plateforme unchanged."""

    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    name = fields.CharField(max_length=50, unique=True)
    definition = fields.TextField()  # JSON, exactly as given
    created_at = fields.DatetimeField()

    class Meta:
        table = "judges"


class Quarantine(Model):
    """A capture record the database refused even after storable.py made its values fit: set
    aside with the error instead of retried forever or blocking the records after it. Kept in
    the same database so every replica sees it; `agentops-studio quarantine retry` stores it
    again (after a fix), `quarantine drop` deletes it."""

    id = fields.BigIntField(primary_key=True)  # the exchange's id
    captured_at = fields.DatetimeField()
    quarantined_at = fields.DatetimeField()
    error = fields.TextField()
    size_bytes = fields.BigIntField()
    record = fields.BinaryField()  # zlib-compressed pickle of plain values (spool.encode)

    class Meta:
        table = "quarantine"


class Campaign(Model):
    """A judge run over a saved search of recorded calls (gateway/replay/campaigns.py), once
    (`batch`) or on each new matching call (`live`); its scores are evaluations whose detail
    names the campaign. The counters are its progress."""

    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    name = fields.CharField(max_length=200)
    description = fields.TextField(default="")
    judge = fields.TextField()  # JSON: the scorer spec, e.g. {"type": "judge", "judge": name}
    search = fields.TextField()  # JSON: the /api/exchanges parameters, plus agent
    max_nb_events = fields.IntField()
    mode = fields.CharField(max_length=8)  # batch, live
    status = fields.CharField(max_length=16)  # running, done, failed
    seen_id = fields.BigIntField(default=0)  # live: the newest exchange id looked at
    selected = fields.IntField(default=0)
    scored = fields.IntField(default=0)
    failed = fields.IntField(default=0)
    score_sum = fields.FloatField(default=0)
    error = fields.TextField(null=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "campaigns"


class CampaignCall(Model):
    """A call a live campaign took to judge: one row per (campaign, call), so a call is judged
    once however late it is recorded and however many replicas poll."""

    key = fields.CharField(max_length=48, primary_key=True)  # "<campaign id>:<exchange id>"
    campaign_id = fields.BigIntField(db_index=True)

    class Meta:
        table = "campaign_calls"


class AlertRule(Model):
    """When to raise an alert and where to send it (gateway/integrations/alerts.py evaluates
    them). `threshold` reads by kind: USD (spend), a factor (spend_spike), a fraction of calls
    (error_rate), milliseconds (p95_latency), calls (unpriced_model), records (capture_loss)."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=200)
    kind = fields.CharField(max_length=32)
    scope_kind = fields.CharField(max_length=16, default="gateway")  # gateway, model, agent, run
    scope_value = fields.CharField(max_length=200, null=True)
    window_seconds = fields.IntField()
    threshold = fields.FloatField()
    baseline_windows = fields.IntField(default=24)  # spend_spike: windows in the trailing mean
    min_calls = fields.IntField(default=1)  # error_rate, p95_latency: fewer calls never fire
    webhook_url = fields.TextField(null=True)  # a secret (Slack's are): shown masked
    webhook_format = fields.CharField(max_length=8, default="json")  # json, slack
    enabled = fields.BooleanField(default=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "alert_rules"


class Alert(Model):
    """One firing of a rule, until it resolves. `open_rule` is the rule's id while firing and
    null after: unique, so replicas that evaluate the same rule open one alert, not several,
    and only the one whose insert won sends the notice."""

    id = fields.IntField(primary_key=True)
    rule_id = fields.IntField(db_index=True)
    state = fields.CharField(max_length=16)  # firing, resolved
    started_at = fields.DatetimeField()
    resolved_at = fields.DatetimeField(null=True)
    value = fields.FloatField()
    threshold = fields.FloatField()
    detail = fields.TextField(null=True)  # what fired it, in words (the unpriced models)
    open_rule = fields.IntField(null=True, unique=True)

    class Meta:
        table = "alerts"


class FineTunedModel(Model):
    """A model a fine-tuning job made (`agentops-studio finetune`), so an experiment can
    select it as a variant and compare it with its base on the same data."""

    name = fields.CharField(max_length=200, primary_key=True)  # the job's fine_tuned_model
    base_model = fields.CharField(max_length=200)
    job_id = fields.CharField(max_length=200)
    run_id = fields.BigIntField(null=True)  # the finetune run that recorded the job's calls
    trained_tokens = fields.BigIntField(null=True)
    cost_usd = fields.FloatField(null=True)  # the job's training cost
    examples = fields.IntField(default=0)  # lines of the uploaded training file
    created_at = fields.DatetimeField()

    class Meta:
        table = "fine_tuned_models"


class Budget(Model):
    """A spend limit for a scope and a calendar period (gateway/store/budgets.py), shared by
    every worker and replica; the proxies read them every second (gateway/proxy/budgets.py)."""

    id = fields.BigIntField(primary_key=True)  # always supplied: see exchange.new_id()
    name = fields.CharField(max_length=200, unique=True)
    scope_kind = fields.CharField(max_length=16)  # gateway, run, agent, user, key, model, provider
    scope_value = fields.CharField(max_length=200, null=True)
    period = fields.CharField(max_length=8)  # day, week, month
    limit_usd = fields.FloatField()
    hard = fields.BooleanField(default=False)
    created_at = fields.DatetimeField()

    class Meta:
        table = "budgets"
