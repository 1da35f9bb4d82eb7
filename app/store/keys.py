"""Every stored name: the dicts, the queues and each key's format, built and parsed here only.

Like arq's ``constants.py``: no other module spells a dict name or formats a key, and
nothing else splits a stored key on ``:``. A key's builder and its parser sit side by
side, so a format can change in one place. Ids may contain ``:`` (user ids do), so
parsers split from the end where the trailing fields are numbers or fixed words.

Which key belongs to whom (``JobStore.purge`` removes every key a job owns):

========================  =========================================  ==========
dict                      key                                        owner
========================  =========================================  ==========
``jobs``                  ``job:{id}`` ``request:{id}``              the job
                          ``terminal:{id}``                          the job
                          ``claim:{id}:{stage}:{epoch}:{attempt}``   the job
                          ``epoch:{id}:{lane}:{n}``                  the job
``active``                ``{id}``                                   the job
``admission``             ``index:{tenant}:{user}:{n}``              the job it names
                          ``index:{tenant}:{user}:hint``             the user (*)
``idempotency``           ``idem:{tenant}:{len}:{user}:{key}``       the job it names
``rates``                 ``rate:{tenant}:{window}:{n}``             the window
``retention-{hour}``      ``{id}``                                   the job it names
``retention``             ``cursor``                                 cleanup
                          ``due:{hour}:{n}`` ``due:{hour}:hint``     (***)
``slots``                 ``slot:{scope}:{i}:{g}``                   the job holding it
                          ``released:{scope}:{i}:{g}``               that same job
                          ``slothints:{scope}``                      the scope
                          ``slotfloor:{scope}:{i}``                  the scope
``delayed``               ``{not_before}:{id}:{stage}:{epoch}:{n}``  the job
``deliveries``            ``{id}``                                   the job
                          ``inflight:{id}:{msg id}``                 the event (**)
``deliveries_pending``    ``{id}``                                   the job
``tenants``               ``tenant:{id}`` ``name:{name}``            the tenant
                          ``keyid:{key id}`` ``key:{sha256}``        the tenant
``catalog``               ``comfy:catalog``                          the deploy
``breaker``               ``render``                                 the deploy
``uploads``               ``upload:{upload id}``                     the upload
``templates``             ``tpl:{tenant}:{name}:{version}``          the template
                          ``tplver:{tenant}:{name}:{n|hint}``        the template
                          ``tpllatest:{tenant}:{name}``              the template
                          ``tplname:{tenant}:{name}``                the tenant
                          ``tplnames:{tenant}:{n|hint}``             the tenant
========================  =========================================  ==========

(*) Written before issue 12 and still read as a fallback: the user's index hint and the
tenant's rate-window hint now ride in ``slothints:{scope}`` (see `claims.SlotHints`), so
the ``rates`` dict holds tickets only.

(**) A non-terminal webhook event being posted; its sender removes it, the terminal
delivery waits while one is live and removes expired ones.

(***) The hour index before issue 12 (a put-if-absent sequence): still walked by cleanup,
no longer written. Nothing of it is left `job_retention_s` after the upgrade.

Queues are named after the stage they feed (``fetch``, ``render``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.models import Stage

# ---- dict names ----------------------------------------------------------------------

#: Job records, requests, terminal decisions, stage claims and fencing epochs.
JOBS_DICT = "jobs"
#: Per-user job indexes.
ADMISSION_DICT = "admission"
#: Idempotency records, apart so cleanup's expiry scan reads only them.
IDEM_DICT = "idempotency"
#: Rate-limit windows, apart so cleanup's scan reads only recent windows.
RATES_DICT = "rates"
#: Cleanup's cursor, and the hour sequences of ended jobs indexed before issue 12's
#: per-hour dicts (`retention_hour_dict`), which cleanup still walks until they are due.
RETENTION_DICT = "retention"
#: Ended jobs of one hour of end, by job id: cleanup streams only the hours now due,
#: never the whole history (a `keys()` scan streams a whole Modal Dict).
RETENTION_HOUR_DICT_PREFIX = "retention-"
#: Slot tenures apart from everything else, so the reaper's scan stays small.
SLOTS_DICT = "slots"
#: Ids of jobs admitted and not yet released (the reaper's working set).
ACTIVE_DICT = "active"
#: Messages parked until a time (stage retries, webhook back-off).
DELAYED_DICT = "delayed"
#: A job's webhook delivery record and its attempt log.
DELIVERIES_DICT = "deliveries"
#: Jobs whose webhook delivery is not finished.
PENDING_DICT = "deliveries_pending"
#: Deliveries that ended `dead`, per tenant (what `GET /v1/webhooks/failed` lists).
DEAD_DICT = "deliveries_dead"
#: Requests a Python client put on the intake queue whose job record does not exist yet.
INTAKE_DICT = "intake_pending"
#: Tenants, their names and API keys.
TENANTS_DICT = "tenants"
#: The ComfyUI node catalog.
CATALOG_DICT = "catalog"
#: Workflow templates: durable records, kept until deleted (never touched by job purge;
#: on Modal they need the durable-record refresh like `tenants`).
TEMPLATES_DICT = "templates"

#: Uploaded inputs (`POST /v1/uploads`, inline base64): owner, object key, expiry. Owned
#: by the upload, not by a job (many jobs may name one); cleanup removes expired ones.
UPLOADS_DICT = "uploads"

#: Circuit breakers (render container start-up failures).
BREAKER_DICT = "breaker"
#: The render class's breaker record.
RENDER_BREAKER_KEY = "render"

#: Open event streams per tenant (leased places, `app.store.streams`); no job owns them.
STREAMS_DICT = "event_streams"

#: Dicts of durable records: they must outlive any idle time, and Modal Dict entries
#: expire after 7 days without a read or write, so `refresh_durable` reads every key of
#: these on a schedule. Only durable records live here (no per-job keys), so the scan
#: costs what the durable records are, never the job history. Workflow templates
#: (issue 15) add their dict here.
DURABLE_DICTS = (TENANTS_DICT, TEMPLATES_DICT)

#: Every dict of a fixed name a job writes to (tests enumerate these; `JobStore.purge`
#: empties them), besides its hour's `retention_hour_dict`.
JOB_DICTS = (
    JOBS_DICT,
    ADMISSION_DICT,
    IDEM_DICT,
    RATES_DICT,
    RETENTION_DICT,
    SLOTS_DICT,
    ACTIVE_DICT,
    DELAYED_DICT,
    DELIVERIES_DICT,
    PENDING_DICT,
    INTAKE_DICT,
    DEAD_DICT,
)


def queue_name(stage: Stage) -> str:
    """The queue feeding `stage`."""
    return stage.value


# ---- jobs dict -----------------------------------------------------------------------

JOB_PREFIX = "job:"
REQUEST_PREFIX = "request:"
TERMINAL_PREFIX = "terminal:"
CLAIM_PREFIX = "claim:"
EPOCH_PREFIX = "epoch:"
LEASE_PREFIX = "lease:"


def job_key(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def request_key(job_id: str) -> str:
    return f"{REQUEST_PREFIX}{job_id}"


def terminal_key(job_id: str) -> str:
    return f"{TERMINAL_PREFIX}{job_id}"


def parse_terminal_key(key: str) -> str:
    """The job id of a `terminal:{id}` key."""
    return _strip(key, TERMINAL_PREFIX)


def lease_key(job_id: str) -> str:
    """The holder's heartbeat: `{stage, epoch, until}`, renewed while a stage works."""
    return f"{LEASE_PREFIX}{job_id}"


def claim_key(job_id: str, stage: Stage, epoch: int, attempt: int) -> str:
    return f"{CLAIM_PREFIX}{job_id}:{stage.value}:{epoch}:{attempt}"


def parse_claim_key(key: str) -> str:
    """The job id of a `claim:` key."""
    job_id, _stage, _epoch, _attempt = _strip(key, CLAIM_PREFIX).rsplit(":", 3)
    return job_id


def epoch_key(job_id: str, lane: str, epoch: int) -> str:
    return f"{EPOCH_PREFIX}{job_id}:{lane}:{epoch}"


def parse_epoch_key(key: str) -> str:
    """The job id of an `epoch:` key."""
    job_id, _lane, _n = _strip(key, EPOCH_PREFIX).rsplit(":", 2)
    return job_id


def job_owned_prefixes(job_id: str) -> tuple[str, ...]:
    """Prefixes of the job's many-keyed records in the jobs dict (parse before deleting:
    a prefix also matches a job whose id extends this one)."""
    return (f"{CLAIM_PREFIX}{job_id}:", f"{EPOCH_PREFIX}{job_id}:")


def parse_job_owned_key(key: str) -> str | None:
    """The job id of a claim or epoch key, None for any other key."""
    if key.startswith(CLAIM_PREFIX):
        return parse_claim_key(key)
    if key.startswith(EPOCH_PREFIX):
        return parse_epoch_key(key)
    return None


# ---- admission dict ------------------------------------------------------------------

IDEM_PREFIX = "idem:"
RATE_PREFIX = "rate:"
INDEX_PREFIX = "index:"
#: The suffix of a sequence's search hint (see `app.store.claims.claim_next`).
HINT = "hint"


def idem_key(tenant_id: str, user_id: str, idempotency_key: str) -> str:
    """One user's idempotency record: a key is scoped to (tenant, user), never shared.

    The user id carries its length because user ids (and keys) may contain ``:``; without
    it user ``a:b`` with key ``c`` and user ``a`` with key ``b:c`` would share a record.
    """
    return f"{IDEM_PREFIX}{tenant_id}:{len(user_id)}:{user_id}:{idempotency_key}"


def idem_prefix(tenant_id: str) -> str:
    return f"{IDEM_PREFIX}{tenant_id}:"


def rate_prefix(tenant_id: str, window: int) -> str:
    """The sequence of one tenant's rate-limit window."""
    return f"{RATE_PREFIX}{tenant_id}:{window}"


def parse_rate_window(key: str) -> int:
    """The window number of a `rate:{tenant}:{window}:{n|hint}` key."""
    _tenant, window, _n = _strip(key, RATE_PREFIX).rsplit(":", 2)
    return int(window)


def index_prefix(tenant_id: str, user_id: str) -> str:
    """The sequence of one user's job index."""
    return f"{INDEX_PREFIX}{tenant_id}:{user_id}"


def sequence_key(prefix: str, n: int) -> str:
    return f"{prefix}:{n}"


def sequence_hint_key(prefix: str) -> str:
    return f"{prefix}:{HINT}"


def parse_sequence_key(key: str) -> tuple[str, int] | None:
    """`(prefix, n)` of a sequence entry; None for its hint."""
    prefix, last = key.rsplit(":", 1)
    return None if last == HINT else (prefix, int(last))


# ---- retention dict ------------------------------------------------------------------

RETENTION_PREFIX = "due:"
#: One index of ended jobs per hour of end.
RETENTION_BUCKET_S = 3600
#: The first hour cleanup has not finished (set by the first job ever indexed).
RETENTION_CURSOR_KEY = "cursor"


def retention_bucket(at: float) -> int:
    """The hour bucket of a time."""
    return int(at // RETENTION_BUCKET_S)


def retention_prefix(bucket: int) -> str:
    """The sequence of jobs that ended in hour `bucket`, as indexed before issue 12."""
    return f"{RETENTION_PREFIX}{bucket}"


def retention_hour_dict(bucket: int) -> str:
    """The dict of the jobs that ended in hour `bucket`, keyed by job id."""
    return f"{RETENTION_HOUR_DICT_PREFIX}{bucket}"


# ---- slots dict ----------------------------------------------------------------------

SLOT_PREFIX = "slot:"
RELEASED_PREFIX = "released:"
SLOT_HINTS_PREFIX = "slothints:"
SLOT_FLOOR_PREFIX = "slotfloor:"


def user_scope(tenant_id: str, user_id: str) -> str:
    """The slot scope of one user's concurrency cap."""
    return f"user:{tenant_id}:{user_id}"


def tenant_scope(tenant_id: str) -> str:
    """The slot scope of one tenant's concurrency cap."""
    return f"tenant:{tenant_id}"


def slot_key(scope: str, index: int, generation: int) -> str:
    return f"{SLOT_PREFIX}{scope}:{index}:{generation}"


def released_key(scope: str, index: int, generation: int) -> str:
    return f"{RELEASED_PREFIX}{scope}:{index}:{generation}"


def parse_slot_key(key: str) -> tuple[str, int, int]:
    """`(scope, index, generation)` of a `slot:` key."""
    scope, index, generation = _strip(key, SLOT_PREFIX).rsplit(":", 2)
    return scope, int(index), int(generation)


def slot_hints_key(scope: str) -> str:
    return f"{SLOT_HINTS_PREFIX}{scope}"


def slot_floor_key(scope: str, index: int) -> str:
    return f"{SLOT_FLOOR_PREFIX}{scope}:{index}"


# ---- delayed dict (parked messages) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParkedKey:
    """The fields of a parked message's key; keys sort by `not_before`."""

    not_before: float
    job_id: str
    stage: Stage
    epoch: int
    attempt: int


def parked_key(not_before: float, job_id: str, stage: Stage, epoch: int, attempt: int) -> str:
    """Zero-padded time first, so sorted keys are in due order."""
    return f"{not_before:017.3f}:{job_id}:{stage.value}:{epoch}:{attempt}"


def parse_parked_key(key: str) -> ParkedKey:
    not_before, rest = key.split(":", 1)
    job_id, stage, epoch, attempt = rest.rsplit(":", 3)
    return ParkedKey(float(not_before), job_id, Stage(stage), int(epoch), int(attempt))


# ---- deliveries and pending deliveries: keyed by the job id itself -------------------


def delivery_key(job_id: str) -> str:
    return job_id


INFLIGHT_PREFIX = "inflight:"


def inflight_prefix(job_id: str) -> str:
    return f"{INFLIGHT_PREFIX}{job_id}:"


def inflight_key(job_id: str, msg_id: str) -> str:
    return f"{inflight_prefix(job_id)}{msg_id}"


def pending_key(job_id: str) -> str:
    return job_id


def active_key(job_id: str) -> str:
    return job_id


def intake_key(job_id: str) -> str:
    return job_id


def dead_prefix(tenant_id: str) -> str:
    return f"{tenant_id}:"


def dead_key(tenant_id: str, job_id: str) -> str:
    return f"{dead_prefix(tenant_id)}{job_id}"


def parse_dead_key(key: str) -> str:
    """The job id of a dead-delivery key."""
    return key.split(":", 1)[1]


# ---- tenants dict --------------------------------------------------------------------

TENANT_PREFIX = "tenant:"
NAME_PREFIX = "name:"
KEY_ID_PREFIX = "keyid:"
KEY_HASH_PREFIX = "key:"


def tenant_key(tenant_id: str) -> str:
    return f"{TENANT_PREFIX}{tenant_id}"


def parse_tenant_key(key: str) -> str:
    return _strip(key, TENANT_PREFIX)


def tenant_name_key(name: str) -> str:
    return f"{NAME_PREFIX}{name}"


def key_id_key(key_id: str) -> str:
    return f"{KEY_ID_PREFIX}{key_id}"


def parse_key_id_key(key: str) -> str:
    return _strip(key, KEY_ID_PREFIX)


def key_hash_key(key_hash: str) -> str:
    return f"{KEY_HASH_PREFIX}{key_hash}"


# ---- catalog dict --------------------------------------------------------------------

#: The published node catalog.
CATALOG_KEY = "comfy:catalog"


# ---- uploads dict --------------------------------------------------------------------

UPLOAD_PREFIX = "upload:"


def upload_key(upload_id: str) -> str:
    """One upload's record."""
    return f"{UPLOAD_PREFIX}{upload_id}"


def parse_upload_key(key: str) -> str:
    """The upload id of an `upload:{id}` key."""
    return _strip(key, UPLOAD_PREFIX)


# ---- templates dict ------------------------------------------------------------------


def template_key(tenant_id: str, name: str, version: int) -> str:
    """One immutable template version (a tombstone-free record; deleting pops it)."""
    return f"tpl:{tenant_id}:{name}:{version}"


def template_versions_prefix(tenant_id: str, name: str) -> str:
    """The sequence that hands out version numbers (never reused: entries stay)."""
    return f"tplver:{tenant_id}:{name}"


def template_latest_key(tenant_id: str, name: str) -> str:
    """The movable `latest` alias: a version number."""
    return f"tpllatest:{tenant_id}:{name}"


def template_name_key(tenant_id: str, name: str) -> str:
    """Marks a name as listed in the tenant's name sequence (listed once)."""
    return f"tplname:{tenant_id}:{name}"


def template_names_prefix(tenant_id: str) -> str:
    """The sequence of a tenant's template names, so listing needs no dict scan."""
    return f"tplnames:{tenant_id}"


def _strip(key: str, prefix: str) -> str:
    if not key.startswith(prefix):
        raise ValueError(f"{key!r} is not a {prefix!r} key")
    return key[len(prefix) :]


# ---- event streams dict --------------------------------------------------------------

STREAM_PREFIX = "stream:"


def stream_prefix(tenant_id: str) -> str:
    """Every stream place of a tenant starts with this."""
    return f"{STREAM_PREFIX}{tenant_id}:"


def stream_key(tenant_id: str, place: int, generation: int) -> str:
    """One tenure of one of a tenant's stream places."""
    return f"{stream_prefix(tenant_id)}{place}:{generation}"


def parse_stream_key(key: str) -> tuple[int, int]:
    """(place, generation) of a `stream_key`."""
    place, generation = key.rsplit(":", 2)[-2:]
    return int(place), int(generation)
