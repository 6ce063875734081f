-- poolgate schema v3 (SQLite): OAuth token refresh. A refresher claims the credential row
-- (a lease) before it sends the single-use refresh token, so no other refresher sends it too;
-- the new tokens replace the old ones only while that claim still holds (compare-and-set).

-- When the access token expires (from its `exp` claim), for finding tokens due for refresh.
ALTER TABLE credentials ADD COLUMN access_expires_at_ms INTEGER;
-- 0 once a claim found no refresh token (access-token-only imports).
ALTER TABLE credentials ADD COLUMN refreshable INTEGER NOT NULL DEFAULT 1;
-- The claim of the refresh in flight and until when it holds.
ALTER TABLE credentials ADD COLUMN refresh_lease TEXT;
ALTER TABLE credentials ADD COLUMN refresh_lease_until_ms INTEGER;
-- No refresh attempt before this (backoff after a transient failure, or a region block).
ALTER TABLE credentials ADD COLUMN refresh_not_before_ms INTEGER;
