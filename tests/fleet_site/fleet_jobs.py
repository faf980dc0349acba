"""The fleet site's RQ jobs (tests/test_rq.py)."""

from fleet_celery import record as _record
from rq.worker import Worker

# The Celery task's own function (runs counted in the cache): an RQ job by its dotted path
record = _record.run


class ScaledWorker(Worker):  # type: ignore[misc]
    """RQ's worker with its pub/sub poll scaled down with the test's token lifetime: RQ reads its command
    channel every 60 s, a blink against a day-long token, longer than a test's 15 s one."""

    def subscribe(self) -> None:
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=0.5, daemon=True, exception_handler=self._pubsub_exception_handler
        )
