"""Analytics SQL: typed functions ``fn(session, *, tenant_id, ...)`` with no Flask imports."""
