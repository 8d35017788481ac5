"""The catalog API: browse (read-only, public) and publishing."""
