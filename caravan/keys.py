"""Every Redis key, stream and channel Caravan uses, in one place.

    caravan:q:{spec}          stream   gateway XADD → worker XREADGROUP (group ``workers``): inference requests
    caravan:r:{request}       stream   worker XADD → gateway XREAD: reply events (start, tok, done, err)
    caravan:c:{request}       string   cancel flag (EX 300), the source of truth; PUBLISH on ``caravan:cancel``
    caravan:cancel            channel  poke workers to check cancel flags
    caravan:models            channel  the registry's models changed: gateways drop their cached records
    caravan:w:{worker}        string   worker heartbeat JSON (EX ``HEARTBEAT_TTL``)
    caravan:workers           zset     worker id → last heartbeat (ms)
    caravan:q:{spec}:u:{user} stream   one user's requests for a spec (fair sharing: workers pick users in turn)
    caravan:qusers:{spec}     zset     users with recent requests for a spec → last enqueue time
    caravan:qweight:{spec}    hash     user → scheduling weight (1 + key priority)
    caravan:bell:{spec}       stream   rung after every enqueue; idle workers block on it
    caravan:q:{spec}:w:{wrk}  stream   one worker's private queue of a spec (session affinity)
    caravan:idle:{spec}       zset     workers blocked waiting for a spec with a free slot → when they said so
    caravan:idlestart:{spec}  hash     idle worker → the ``start`` event a hand-off writes; #worker → free slots
    caravan:inbox:{spec}:{w}  stream   requests handed straight to an idle worker by the enqueue script
    caravan:aff:{conv}        string   worker that served a conversation prefix (EX 900)
    caravan:loaderr:{spec}    string   last load failure of a spec (EX 30), so waiting requests fail fast
    arq:ctl:{worker}          arq      load/unload control jobs for one worker
    caravan:pull:{name}:{run} stream   registry pull job XADD → /api/pull handlers XREAD: Ollama progress objects
    caravan:push:{name}:{run} stream   the same for push jobs
    arq:registry              arq      the registry's pull/push jobs (job id ``pull:{name}`` / ``push:{name}``)
    caravan:apikey:{sha256}   hash     one API key by the sha256 of its secret: id, name, role, models, limits, …
    caravan:apikeys           hash     API key id → sha256 of its secret (listing, revocation)
    caravan:rl:{key id}       string   requests in the key's current one-minute window (PEXPIRE 60 s)
    caravan:inflight:{key id} zset     the key's in-flight requests → lease expiry (concurrency limit)
    caravan:tokens:{key id}:{yyyymmdd}  string  tokens the key used that UTC day (EX 2 days)
    caravan:usage:{yyyymmdd}  hash     field "user|model|kind" (requests, prompt_tokens, completion_tokens) → count
"""

from __future__ import annotations

PREFIX = "caravan"
GROUP = "workers"
CANCEL_CHANNEL = f"{PREFIX}:cancel"
MODELS_CHANNEL = f"{PREFIX}:models"
WORKERS = f"{PREFIX}:workers"
WORKER_CLIENT_PREFIX = f"{PREFIX}-worker:"  # CLIENT SETNAME of every worker connection (liveness)
HEARTBEAT_TTL = 10
LOAD_ERROR_TTL = 30
REPLY_TTL = 120
CANCEL_TTL = 300
REGISTRY_QUEUE = "arq:registry"
TRANSFER_TTL = 600  # a finished pull/push progress stream lingers this long


def queue(spec_key: str) -> str:
    """Inference request stream for one (model, load options) spec."""
    return f"{PREFIX}:q:{spec_key}"


def worker_queue(spec_key: str, worker_id: str) -> str:
    """One worker's private queue for a spec (affinity)."""
    return f"{PREFIX}:q:{spec_key}:w:{worker_id}"


def user_queue(spec_key: str, user: str) -> str:
    """One user's queue for a spec (fair sharing)."""
    return f"{PREFIX}:q:{spec_key}:u:{user}"


def queue_users(spec_key: str) -> str:
    """Users with requests for a spec, scored by last enqueue time."""
    return f"{PREFIX}:qusers:{spec_key}"


def queue_weights(spec_key: str) -> str:
    """User → weight for a spec's fair sharing."""
    return f"{PREFIX}:qweight:{spec_key}"


def bell(spec_key: str) -> str:
    """Doorbell stream of a spec: one tiny entry per enqueue."""
    return f"{PREFIX}:bell:{spec_key}"


def idle(spec_key: str) -> str:
    """Workers waiting for a spec with a free slot, scored by when they said so (direct hand-off)."""
    return f"{PREFIX}:idle:{spec_key}"


def idle_start(spec_key: str) -> str:
    """Idle worker → the ``start`` event a hand-off to it writes; ``#worker`` → hand-offs it can still take."""
    return f"{PREFIX}:idlestart:{spec_key}"


def inbox(spec_key: str, worker_id: str) -> str:
    """Requests handed straight to one idle worker (already started; read by id, not by a group)."""
    return f"{PREFIX}:inbox:{spec_key}:{worker_id}"


def affinity(conversation: str) -> str:
    """Which worker served a conversation prefix."""
    return f"{PREFIX}:aff:{conversation}"


def load_error(spec_key: str) -> str:
    """The last load failure of a spec."""
    return f"{PREFIX}:loaderr:{spec_key}"


def reply(request_id: str) -> str:
    """Per-request reply stream."""
    return f"{PREFIX}:r:{request_id}"


def cancel(request_id: str) -> str:
    """Cancel flag for one request."""
    return f"{PREFIX}:c:{request_id}"


def worker(worker_id: str) -> str:
    """Heartbeat of one worker."""
    return f"{PREFIX}:w:{worker_id}"


def control_queue(worker_id: str) -> str:
    """arq queue name for one worker's control jobs."""
    return f"arq:ctl:{worker_id}"


def pull_progress(name_key: str, run: str) -> str:
    """Progress stream of one run of the pull job of a model (``ModelName.key()``)."""
    return f"{PREFIX}:pull:{name_key}:{run}"


def push_progress(name_key: str, run: str) -> str:
    """Progress stream of one run of the push job of a model."""
    return f"{PREFIX}:push:{name_key}:{run}"


API_KEYS = f"{PREFIX}:apikeys"


def api_key(digest: str) -> str:
    """One API key's record, by the sha256 (hex) of its secret."""
    return f"{PREFIX}:apikey:{digest}"


def rate_window(key_id: str) -> str:
    """Requests of one API key in its current one-minute window."""
    return f"{PREFIX}:rl:{key_id}"


def in_flight(key_id: str) -> str:
    """In-flight request leases of one API key."""
    return f"{PREFIX}:inflight:{key_id}"


def daily_tokens(key_id: str, day: str) -> str:
    """Tokens one API key used on one UTC day (``yyyymmdd``)."""
    return f"{PREFIX}:tokens:{key_id}:{day}"


def usage(day: str) -> str:
    """Usage counters of one UTC day (``yyyymmdd``)."""
    return f"{PREFIX}:usage:{day}"
