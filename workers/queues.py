"""Every queue and task name in one place.

One queue per channel so each worker pool scales on its own; fan-out and maintenance
have their own so a broadcast never waits behind a sweep, or the reverse. Small
notifications (a few users: a password reset, a message) take the transactional lane, a
queue and pool of their own where one task fans out and sends, so they never wait
behind a broadcast's thousands of batches.
"""

from notifier.model import Platform

NOTIFY = "notify"
MAINTENANCE = "maintenance"
TRANSACTIONAL = "transactional"
CHANNEL_QUEUES: dict[Platform, str] = {p: p.value for p in Platform}
ALL_QUEUES = [NOTIFY, TRANSACTIONAL, *CHANNEL_QUEUES.values(), MAINTENANCE]

TASK_FAN_OUT = "notifier.fan_out"
TASK_SEND: dict[Platform, str] = {p: f"notifier.send_{p.value}" for p in Platform}
TASK_FCM_TARGET = "notifier.send_fcm_target"
TASK_FCM_TOPIC_MEMBERS = "notifier.fcm_topic_members"
TASK_SWEEP = "notifier.sweep_stale_tokens"
TASK_RESUME = "notifier.resume_owed"
TASK_PURGE = "notifier.purge_outcomes"
TASK_FALLBACK_WEBHOOK = "notifier.fallback_webhook"

ROUTES: dict[str, dict[str, str]] = {
    TASK_FAN_OUT: {"queue": NOTIFY},
    **{TASK_SEND[p]: {"queue": CHANNEL_QUEUES[p]} for p in Platform},
    TASK_FCM_TARGET: {"queue": CHANNEL_QUEUES[Platform.FCM]},
    TASK_FCM_TOPIC_MEMBERS: {"queue": CHANNEL_QUEUES[Platform.FCM]},
    TASK_SWEEP: {"queue": MAINTENANCE},
    TASK_RESUME: {"queue": MAINTENANCE},
    TASK_PURGE: {"queue": MAINTENANCE},
    TASK_FALLBACK_WEBHOOK: {"queue": MAINTENANCE},
}
