-- poolgate schema v5 (PostgreSQL): a request log is identified by (ts_ms, id) in the one
-- unique index that also orders and pages the logs, instead of a primary key on `id` beside
-- it. A request id is unique by itself (its first 12 hex digits are its timestamp), and a
-- batch a gateway sends again carries the same pair, so the index still drops duplicates;
-- ingest maintains one B-tree less per row.

CREATE UNIQUE INDEX request_logs_ts_key_idx ON request_logs (ts_ms, id);
DROP INDEX request_logs_ts_idx;
ALTER INDEX request_logs_ts_key_idx RENAME TO request_logs_ts_idx;
ALTER TABLE request_logs DROP CONSTRAINT request_logs_pkey;
