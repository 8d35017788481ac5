"""Billing models arrive with paid plans (see issue on licensing and billing)."""
