"""The scheduler service (`jetl serve scheduler`): one process, two jobs.

- The scheduler proper turns cron schedules into run requests (`cron.py`, a loop every `tick_seconds`) and sends
  alerts (`alerts.py`).
- The tracker (`tracker.py`) folds every lifecycle event into the run-state bucket and declares a run complete once
  its ledger is settled (every extracted batch reached the destination or the DLQ). JETL_EVENTS is sharded by run
  (`jetl.subjects.TRACKER_SHARDS`, durables `tracker-<k>`), and each replica pulls the shards it holds a lease on
  (`shards.py`): two replicas never fold the same run.

Every scheduler replica runs both jobs: replicas share the tracker's shards between them, and claim each cron slot
by its deterministic run id (the stream drops a second request as a duplicate), so N replicas request one run per
slot.
"""
