"""Global fixtures. Service fixtures (SeaweedFS S3, a real Celery worker) live in tests/plugins/services.py."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.plugins.services", "tests.plugins.inference_worker", "tests.plugins.fake_stripe"]


@pytest.fixture
def make_user(db):
    from accounts.models import User

    counter = {"n": 0}

    def _make(email: str | None = None, password: str = "pass-Word-123", **extra):
        counter["n"] += 1
        email = email or f"user{counter['n']}@example.com"
        return User.objects.create_user(email=email, password=password, **extra)

    return _make


@pytest.fixture
def make_org(db):
    from accounts.models import Membership, Organization, Role

    counter = {"n": 0}

    def _make(*, owner=None, name: str | None = None, role: str = Role.OWNER):
        counter["n"] += 1
        name = name or f"Org {counter['n']}"
        org = Organization.objects.create(name=name, slug=f"org-{counter['n']}-{name.lower().replace(' ', '-')}"[:60])
        if owner is not None:
            Membership.objects.create(organization=org, user=owner, role=role)
        return org

    return _make


@pytest.fixture
def publisher(make_user, make_org):
    """A user who owns a publisher organization."""
    user = make_user(email="publisher@example.com")
    org = make_org(owner=user, name="Acme Models")
    return user, org


@pytest.fixture
def staff_user(make_user):
    return make_user(email="admin@example.com", is_staff=True, is_superuser=True)
