-- poolgate schema v4 (PostgreSQL): how a request's upstream was spoken to, for clients served
-- by translation (Anthropic Messages or Chat Completions on a Responses upstream).

-- none | chat_to_responses | messages_to_responses; rows from before read as `none`.
ALTER TABLE request_logs ADD COLUMN translation TEXT COLLATE "C" NOT NULL DEFAULT 'none';
-- The model the upstream was asked for, when it differs from `model`.
ALTER TABLE request_logs ADD COLUMN upstream_model TEXT COLLATE "C";
