"""Every Redis key, stream and channel Caravan uses, in one place.

    caravan:q:{spec}          stream   gateway XADD → worker XREADGROUP (group ``workers``): inference requests
    caravan:r:{request}       stream   worker XADD → gateway XREAD: reply events (start, tok, done, err)
    caravan:c:{request}       string   cancel flag (EX 300), the source of truth; PUBLISH on ``caravan:cancel``
    caravan:cancel            channel  poke workers to check cancel flags
    caravan:w:{worker}        string   worker heartbeat JSON (EX ``HEARTBEAT_TTL``)
    caravan:workers           zset     worker id → last heartbeat (ms)
    caravan:spec:{spec}       string   the LoadSpec JSON of a queue, so any worker can load it
    caravan:dlq               stream   requests that killed too many workers
    arq:ctl:{worker}          arq      load/unload control jobs for one worker
"""

from __future__ import annotations

PREFIX = "caravan"
GROUP = "workers"
CANCEL_CHANNEL = f"{PREFIX}:cancel"
WORKERS = f"{PREFIX}:workers"
DLQ = f"{PREFIX}:dlq"
HEARTBEAT_TTL = 10
REPLY_TTL = 120
CANCEL_TTL = 300


def queue(spec_key: str) -> str:
    """Inference request stream for one (model, load options) spec."""
    return f"{PREFIX}:q:{spec_key}"


def reply(request_id: str) -> str:
    """Per-request reply stream."""
    return f"{PREFIX}:r:{request_id}"


def cancel(request_id: str) -> str:
    """Cancel flag for one request."""
    return f"{PREFIX}:c:{request_id}"


def worker(worker_id: str) -> str:
    """Heartbeat of one worker."""
    return f"{PREFIX}:w:{worker_id}"


def spec(spec_key: str) -> str:
    """The LoadSpec behind a queue."""
    return f"{PREFIX}:spec:{spec_key}"


def control_queue(worker_id: str) -> str:
    """arq queue name for one worker's control jobs."""
    return f"arq:ctl:{worker_id}"
