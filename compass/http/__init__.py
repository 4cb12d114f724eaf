"""The HTTP edge: the app factory, route handlers, admin API and page, auth, error mapping."""
