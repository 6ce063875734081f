-- poolgate schema v3 (PostgreSQL): OAuth token refresh. A refresher claims the credential row
-- (a lease) before it sends the single-use refresh token, so no other replica sends it too;
-- the new tokens replace the old ones only while that claim still holds (compare-and-set).

-- When the access token expires (from its `exp` claim), for finding tokens due for refresh.
ALTER TABLE credentials ADD COLUMN access_expires_at_ms BIGINT;
-- FALSE once a claim found no refresh token (access-token-only imports).
ALTER TABLE credentials ADD COLUMN refreshable BOOLEAN NOT NULL DEFAULT TRUE;
-- The claim of the refresh in flight and until when it holds.
ALTER TABLE credentials ADD COLUMN refresh_lease TEXT;
ALTER TABLE credentials ADD COLUMN refresh_lease_until_ms BIGINT;
-- No refresh attempt before this (backoff after a transient failure, or a region block).
ALTER TABLE credentials ADD COLUMN refresh_not_before_ms BIGINT;
