"""factory_boy factories for catalog rows, created directly (no services): for tests of reads.

``PublishedListingFactory`` makes a public listing with a published current version, a signature and a
validation report, and fills the PostgreSQL search document, which is what the catalog pages expect.
"""

from __future__ import annotations

import hashlib

import factory
from django.utils import timezone

from accounts.models import Organization
from catalog.models import ListingStatus, Tag, Version, VersionStatus
from catalog.search import listing_search_document_update


def example_signature() -> dict:
    return {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
    }


def example_report(*, p50_ms_b1: float = 0.42) -> dict:
    return {
        "metrics": {
            "cold_load_ms": 35.2,
            "p50_ms_b1": p50_ms_b1,
            "p95_ms_b1": round(p50_ms_b1 * 1.6, 3),
            "p50_ms_b8": round(p50_ms_b1 * 2.5, 3),
            "p95_ms_b8": round(p50_ms_b1 * 3.5, 3),
            "batchable": True,
            "provider": "CPUExecutionProvider",
        },
        "model": {
            "ir_version": 9,
            "opsets": {"": 17, "ai.onnx.ml": 3},
            "producer_name": "skl2onnx",
            "node_count": 12,
            "parameter_bytes": 48_213,
        },
    }


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Publisher {n}")
    slug = factory.Sequence(lambda n: f"publisher-{n}")


class TagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tag
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tag-{n}")


class ListingFactory(factory.django.DjangoModelFactory):
    """A draft listing. Pass ``tags=[...]`` (names or Tag objects) to attach tags."""

    class Meta:
        model = "catalog.Listing"
        skip_postgeneration_save = True

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Specialist {n}")
    slug = factory.Sequence(lambda n: f"specialist-{n}")
    summary = "A small model that does one thing well."
    model_card = "## Intended use\n\nTabular classification.\n"
    domain = "other"
    task = "classification"
    license = "apache-2.0"
    status = ListingStatus.DRAFT

    @factory.post_generation
    def tags(self, create: bool, extracted: list | None, **kwargs: object) -> None:
        if not create or not extracted:
            return
        self.tags.set([t if isinstance(t, Tag) else Tag.objects.get_or_create(name=t)[0] for t in extracted])
        listing_search_document_update(listing_ids=[self.pk])


class VersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Version

    listing = factory.SubFactory(ListingFactory)
    version = factory.Sequence(lambda n: f"1.0.{n}")
    major = factory.LazyAttribute(lambda o: int(o.version.split(".")[0]))
    minor = factory.LazyAttribute(lambda o: int(o.version.split(".")[1]))
    patch = factory.LazyAttribute(lambda o: int(o.version.split(".")[2].split("-")[0]))
    changelog = "First release."
    status = VersionStatus.PUBLISHED
    artifact_key = factory.Sequence(lambda n: f"artifacts/test/{n}/model.onnx")
    artifact_size = 48_213
    artifact_sha256 = factory.Sequence(lambda n: hashlib.sha256(str(n).encode()).hexdigest())
    signature = factory.LazyFunction(example_signature)
    validation_report = factory.LazyFunction(example_report)
    published_at = factory.LazyFunction(timezone.now)


class PublishedListingFactory(ListingFactory):
    """A public listing whose current version is a published version with a signature and a report.

    ``current_version__p50_ms_b1=1.5`` sets its measured latency; other ``current_version__*`` keywords go to
    ``VersionFactory``; ``current_version=<Version>`` uses that version instead.
    """

    status = ListingStatus.PUBLISHED
    published_at = factory.LazyFunction(timezone.now)

    @factory.post_generation
    def current_version(self, create: bool, extracted: Version | None, **kwargs: object) -> None:
        if not create:
            return
        if extracted is None:
            p50 = kwargs.pop("p50_ms_b1", None)
            report = example_report(p50_ms_b1=p50) if p50 is not None else example_report()
            extracted = VersionFactory(listing=self, version="1.0.0", validation_report=report, **kwargs)
        self.current_version = extracted
        self.save(update_fields=["current_version"])
        listing_search_document_update(listing_ids=[self.pk])
