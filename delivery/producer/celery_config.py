"""How producer and workers reach the broker: Celery settings shared by both sides."""

from typing import Any

from schemas import Settings

#: The delivery task, published by name so the producer never imports the worker.
DELIVER_TASK = "delivery.deliver"
#: Many deliveries in one task message: what ``send_many`` publishes.
DELIVER_BATCH_TASK = "delivery.deliver_batch"
#: The sweep as a task, for beat schedules of old; the workers now sweep by themselves.
SWEEP_TASK = "delivery.sweep"
#: Hands one recorded inbound message to the router (``workers.inbound``).
ROUTE_INBOUND_TASK = "delivery.route_inbound"
#: Fans one event out to its subscriptions (``delivery.notify``; ``workers.events``).
FANOUT_TASK = "delivery.fanout"
#: A delivery task message's header: when the producer published it (UTC epoch seconds).
#: A worker erases, unsent, a delivery to an address erased since (``delivery erase``). A
#: header, not an envelope field: workers older than it ignore a header they do not know,
#: but refuse an envelope with a field they do not know.
PUBLISHED_AT_HEADER = "delivery_published_at"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings suited to at-least-once, I/O-bound delivery work."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # JSON only: task messages are data, never pickles a broker could be fed.
        "task_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # The delivery log is the result store; a result backend would only duplicate it.
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: acknowledge after the attempt is recorded, and put the message back
        # if the process running it dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # After a broker restart Celery lowers the prefetch by the tasks running and raises
        # it again from each acknowledgement's callback: a synchronous ``basic.qos`` on
        # RabbitMQ, which from a pool thread (where the coalescer acknowledges) races the
        # consumer's own reads and wedged a worker. The coalescer sizes what it reserves
        # itself, so the prefetch stays as it is.
        "worker_enable_prefetch_count_reduction": False,
        "task_default_queue": settings.queue,
        "task_routes": {
            DELIVER_TASK: {"queue": settings.queue},
            DELIVER_BATCH_TASK: {"queue": settings.queue},
            SWEEP_TASK: {"queue": settings.queue},
            ROUTE_INBOUND_TASK: {"queue": settings.queue},
            FANOUT_TASK: {"queue": settings.queue},
        },
        # The sweep needs no beat: the workers take turns at it (``workers.sweeper``).
        "beat_schedule": {},
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
        "worker_concurrency": settings.worker_concurrency,
        # Threads: delivery is network-bound, and threads share the per-thread HTTP and
        # SMTP clients' process, its DB pool and channel cache without monkey-patching.
        "worker_pool": settings.worker_pool,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_hijack_root_logger": False,
    }
    if settings.is_embedded_broker:
        # A SQLite file of its own (not the log's): nothing taken is lost if a worker dies,
        # and garbage on the queue cannot stop one. ``filesystem://`` (the old default)
        # means the same.
        config["broker_transport"] = "delivery.transport.embedded:Transport"
        config["broker_transport_options"] = {
            "database": str(settings.broker_file),
            "polling_interval": 0.05,
        }
        # Its worker has Celery's timer thread (Redis and RabbitMQ workers have an event
        # loop), which sleeps this long between turns and is waited for at a shutdown.
        config["worker_timer_precision"] = 0.25
    elif settings.is_redis_broker:
        # Our subclass of kombu's Redis transport: garbage on the queue cannot stop a worker.
        config["broker_transport"] = "delivery.transport.redis:Transport"
        config["broker_transport_options"] = {
            "visibility_timeout": settings.visibility_timeout,
            "socket_connect_timeout": 5,
            # Keep the heartbeat alive and look for what dead workers held every few seconds;
            # kombu's default (every tenth check of ten seconds) leaves them for minutes.
            "unacked_restore_interval": max(1.0, min(5.0, settings.visibility_timeout / 4)),
            "unacked_restore_throttle": 1,
            # One list per queue (no priorities), so a worker can take messages with BLMOVE.
            "priority_steps": [0],
        }
    elif settings.is_amqp_broker:
        # Our subclass of kombu's py-amqp transport: a crafted message cannot stop a worker.
        secure = settings.broker_url.startswith("amqps://")
        config["broker_transport"] = (
            f"delivery.transport.amqp:{'SSLTransport' if secure else 'Transport'}"
        )
        config["broker_transport_options"] = {
            # Publisher confirms: a publish returns once RabbitMQ has the message.
            "confirm_publish": True,
        }
    return config
