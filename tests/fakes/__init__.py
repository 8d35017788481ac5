"""Local fakes of outside services the tests talk to over real HTTP (see tests/fakes/stripe_server.py)."""
