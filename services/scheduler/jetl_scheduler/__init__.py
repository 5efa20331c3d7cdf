"""The scheduler service (`jetl serve scheduler`): one process, two jobs.

- The scheduler proper turns cron schedules into run requests (`cron.py`, a loop every `tick_seconds`) and sends
  alerts (`alerts.py`).
- The tracker (`tracker.py`) is the service's consumer: the durable pull consumer named `tracker` on JETL_EVENTS
  (see `jetl.subjects.CONSUMERS`). It folds every lifecycle event into the run-state bucket and declares a run
  complete once its ledger is settled (every extracted batch reached the destination or the DLQ).

So the service is called `scheduler` and its durable consumer `tracker` (`ServiceContext.consumer` maps one to the
other). Every scheduler replica runs both jobs: replicas share the tracker's durable, and claim each cron slot by
its deterministic run id (the stream drops a second request as a duplicate), so N replicas request one run per
slot.
"""
