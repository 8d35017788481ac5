"""Listings (what a buyer finds) and their versions (the ONNX artifacts that get validated and served)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.search import SearchVectorField
from django.db import models


class Domain(models.TextChoices):
    HEALTHCARE = "healthcare", "Healthcare"
    LEGAL = "legal", "Legal"
    FINANCE = "finance", "Finance"
    CODE = "code", "Code"
    VISION = "vision", "Vision"
    LANGUAGE = "language", "Language"
    SCIENCE = "science", "Science"
    RETAIL = "retail", "Retail"
    INDUSTRY = "industry", "Industry"
    OTHER = "other", "Other"


class Task(models.TextChoices):
    CLASSIFICATION = "classification", "Classification"
    REGRESSION = "regression", "Regression"
    EMBEDDING = "embedding", "Embedding"
    TOKEN_CLASSIFICATION = "token-classification", "Token classification"
    SEQ2SEQ = "sequence-to-sequence", "Sequence to sequence"
    DETECTION = "detection", "Detection"
    OTHER = "other", "Other"


class LicenseTemplate(models.TextChoices):
    APACHE_2 = "apache-2.0", "Apache License 2.0"
    MIT = "mit", "MIT License"
    CC_BY_4 = "cc-by-4.0", "Creative Commons Attribution 4.0"
    COMMERCIAL = "commercial", "Commercial use"
    RESEARCH = "research-only", "Research and evaluation only"
    CUSTOM = "custom", "Custom terms"


class ListingStatus(models.TextChoices):
    DRAFT = "draft", "Draft"  # no published version yet
    PUBLISHED = "published", "Published"
    SUSPENDED = "suspended", "Suspended"  # hidden by an admin; can be reinstated


class Tag(models.Model):
    name = models.CharField(max_length=40, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Listing(models.Model):
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="listings")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=80, unique=True)
    summary = models.CharField(max_length=280)
    model_card = models.TextField(blank=True, help_text="Markdown")
    domain = models.CharField(max_length=20, choices=Domain.choices, default=Domain.OTHER)
    task = models.CharField(max_length=30, choices=Task.choices, default=Task.OTHER)
    tags = models.ManyToManyField(Tag, blank=True, related_name="listings")
    license = models.CharField(max_length=20, choices=LicenseTemplate.choices, default=LicenseTemplate.APACHE_2)
    license_text = models.TextField(blank=True, help_text="The full terms when the license is custom.")
    status = models.CharField(max_length=12, choices=ListingStatus.choices, default=ListingStatus.DRAFT)
    status_reason = models.TextField(blank=True)
    is_featured = models.BooleanField(default=False)
    featured_at = models.DateTimeField(null=True, blank=True)
    # The version buyers on the stable channel get; set when a version is published.
    current_version = models.ForeignKey(
        "catalog.Version", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # PostgreSQL full-text document, kept up to date by catalog.services (stays NULL on SQLite).
    search_vector = SearchVectorField(null=True, editable=False)

    class Meta:
        ordering = ["-published_at", "-created_at"]
        indexes = [
            models.Index(fields=["status", "-published_at"], name="listing_status_published"),
            models.Index(fields=["status", "domain"], name="listing_status_domain"),
            models.Index(fields=["status", "task"], name="listing_status_task"),
            models.Index(fields=["status", "license"], name="listing_status_license"),
            models.Index(fields=["is_featured", "status"], name="listing_featured"),
            # Covers the facet counts of the catalog (an index-only scan, see catalog.selectors).
            models.Index(fields=["status", "domain", "task", "license"], name="listing_status_facets"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_public(self) -> bool:
        return self.status == ListingStatus.PUBLISHED


class VersionStatus(models.TextChoices):
    UPLOADING = "uploading", "Uploading"
    VALIDATING = "validating", "Validating"
    INVALID = "invalid", "Invalid"
    READY = "ready", "Ready for review"
    IN_REVIEW = "in_review", "In review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    PUBLISHED = "published", "Published"
    DEPRECATED = "deprecated", "Deprecated"
    WITHDRAWN = "withdrawn", "Withdrawn"


# Versions that buyers may call: published ones, and deprecated ones for pinned buyers.
SERVABLE_STATUSES = (VersionStatus.PUBLISHED, VersionStatus.DEPRECATED)


class UploadMode(models.TextChoices):
    POST = "post", "Presigned POST"
    MULTIPART = "multipart", "Multipart"


class Version(models.Model):
    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="versions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    version = models.CharField(max_length=40, help_text="Semantic version, e.g. 1.2.0")
    # Parsed semver for ordering.
    major = models.PositiveIntegerField(default=0)
    minor = models.PositiveIntegerField(default=0)
    patch = models.PositiveIntegerField(default=0)
    prerelease = models.CharField(max_length=40, blank=True)
    changelog = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=VersionStatus.choices, default=VersionStatus.UPLOADING)
    status_reason = models.TextField(blank=True, help_text="Why it is invalid, rejected or withdrawn.")

    # The artifact in object storage.
    artifact_key = models.CharField(max_length=300, unique=True)
    artifact_size = models.BigIntegerField(help_text="Size the client declared, in bytes.")
    artifact_sha256 = models.CharField(max_length=64, help_text="SHA-256 the client declared.")
    upload_mode = models.CharField(max_length=10, choices=UploadMode.choices, default=UploadMode.POST)
    upload_id = models.CharField(max_length=300, blank=True, help_text="S3 multipart upload id.")
    upload_completed_at = models.DateTimeField(null=True, blank=True)
    # Where the artifact came from when not uploaded from the publisher's disk, e.g.
    # {"hub": "acme/iris", "filename": "model.onnx", "ref": "main", "revision": "<commit>"}.
    source = models.JSONField(default=dict, blank=True)

    # Optional example input (tensor name -> nested list) for the smoke test and the playground.
    sample_input = models.JSONField(null=True, blank=True)
    # Filled by validation.
    signature = models.JSONField(null=True, blank=True)
    validation_report = models.JSONField(default=dict, blank=True)
    validation_started_at = models.DateTimeField(null=True, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)

    # Serving: concurrent requests are micro-batched along the batch dimension up to this size,
    # waiting at most this long for company (when the signature has a dynamic batch dimension).
    max_batch_size = models.PositiveIntegerField(default=32)
    max_queue_delay_ms = models.FloatField(default=2.0)

    submitted_at = models.DateTimeField(null=True, blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-major", "-minor", "-patch", "-created_at"]
        constraints = [models.UniqueConstraint(fields=["listing", "version"], name="version_unique_per_listing")]
        indexes = [models.Index(fields=["status", "submitted_at"], name="version_status_submitted")]

    def __str__(self) -> str:
        return f"{self.listing.slug}@{self.version}"

    @property
    def metrics(self) -> dict:
        return (self.validation_report or {}).get("metrics") or {}
