-- Each periodic job runs once per tick, however many beat processes dispatch it: a run
-- starts only when the last one started at least 90 % of the interval ago
-- (store.OwedQueries.start_periodic). `runs` and `skipped` count both outcomes.
CREATE TABLE periodic_runs (
    job          text        PRIMARY KEY,
    last_started timestamptz NOT NULL,
    runs         bigint      NOT NULL DEFAULT 1,
    skipped      bigint      NOT NULL DEFAULT 0
);
