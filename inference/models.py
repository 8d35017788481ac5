"""Inference models (usage records, API keys) arrive with the metered inference API."""
