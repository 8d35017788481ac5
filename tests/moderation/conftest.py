"""Rows for moderation tests: a publisher organization with an owner, an admin and a plain member, and
versions in review with a validation report, made directly with the catalog factories."""

from __future__ import annotations

import pytest
from django.utils import timezone

from accounts.models import Membership, Role
from catalog.models import ListingStatus, VersionStatus
from tests.catalog.factories import ListingFactory, PublishedListingFactory, VersionFactory


def passed_report() -> dict:
    """A validation report shaped like inference.validation's, with every step passed."""
    steps = [
        ("size", "File size", "47.1 KiB (48213 bytes)."),
        ("sha256", "Checksum (SHA-256)", "Matches the declared checksum."),
        ("checker", "ONNX checker", "onnx.checker (full check, with shape inference) passed."),
        ("smoke", "Test inference", "Ran on generated input; outputs: probabilities [1, 2]."),
    ]
    return {
        "ok": True,
        "reason": None,
        "steps": [
            {"key": key, "label": label, "status": "passed", "detail": detail, "duration_ms": 1.5}
            for key, label, detail in steps
        ],
        "metrics": {
            "cold_load_ms": 35.2,
            "p50_ms_b1": 0.42,
            "p95_ms_b1": 0.61,
            "p50_ms_b8": 1.05,
            "p95_ms_b8": 1.4,
            "batchable": True,
            "provider": "CPUExecutionProvider",
        },
    }


@pytest.fixture
def org_team(make_user, make_org):
    """``(owner, admin, member, org)``: only owners and admins get moderation emails."""
    owner = make_user(email="owner@publisher.example")
    admin = make_user(email="admin@publisher.example")
    member = make_user(email="member@publisher.example")
    org = make_org(owner=owner, name="Acme Models")
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    return owner, admin, member, org


@pytest.fixture
def make_version_in_review(org_team):
    owner, _, _, org = org_team

    def _make(*, listing=None, name: str = "Sepsis Risk", slug: str | None = None, version: str = "1.0.0", **extra):
        if listing is None:
            listing = ListingFactory(
                organization=org,
                created_by=owner,
                name=name,
                slug=slug or name.lower().replace(" ", "-"),
                model_card="## Intended use\n\nEarly warning for **sepsis** in adult ICU patients.\n",
                status=ListingStatus.DRAFT,
            )
        return VersionFactory(
            listing=listing,
            version=version,
            created_by=owner,
            status=VersionStatus.IN_REVIEW,
            published_at=None,
            submitted_at=extra.pop("submitted_at", timezone.now()),
            validation_report=passed_report(),
            **extra,
        )

    return _make


@pytest.fixture
def version_in_review(make_version_in_review):
    return make_version_in_review()


@pytest.fixture
def published_listing(org_team):
    _, _, _, org = org_team
    return PublishedListingFactory(organization=org, name="Contract Clauses", slug="contract-clauses")


@pytest.fixture
def buyer(make_user):
    return make_user(email="buyer@example.com")
