"""The server process: `main.serve` (listen, migrate, publish the admin token, run uvicorn) and
every long-running loop beside it, all of one shape (`loop.Loop`):

- `annealer.AnnealerLoop`  drives the engine's annealer (claim, run, apply, recover);
- `power.PowerWorker`      carries out queued power requests, outside any transaction;
- `watchdog.Watchdog`      moves nodes stuck in a waiting state to `problem`;
- `reconciler.Reconciler`  keeps dnsmasq's host reservations in step with the database (--provision);
- `notices.Notices`        hears the agent work other servers on the same PostgreSQL commit;
- `collector.Collector`    runs the garbage collector's long passes on a clock.

Loops may call services; nothing below this package imports it.
"""
