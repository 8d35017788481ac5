"""Catalog reads against real PostgreSQL: full-text ranking, prefix search, facets, filters, visibility."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.http import Http404
from django.utils import timezone

from catalog import selectors
from catalog.models import ListingStatus, VersionStatus
from tests.catalog.factories import ListingFactory, OrganizationFactory, PublishedListingFactory, VersionFactory

pytestmark = pytest.mark.django_db


def slugs(qs) -> list[str]:
    return [listing.slug for listing in qs]


def test_name_match_ranks_above_model_card_match():
    in_card = PublishedListingFactory(
        slug="card-only",
        name="Tabular risk scorer",
        summary="Scores patients from lab values.",
        model_card="Trained on a diabetes cohort. Diabetes outcomes at 5 years; diabetes type 2 only.",
    )
    in_name = PublishedListingFactory(slug="in-name", name="Diabetes risk", summary="Risk from lab values.")
    PublishedListingFactory(slug="unrelated", name="Contract clause tagger", summary="Finds clauses.")

    results = slugs(selectors.listing_search(query="diabetes", sort="relevance"))

    assert results == [in_name.slug, in_card.slug]


def test_summary_match_ranks_above_model_card_match():
    in_card = PublishedListingFactory(slug="a-card", name="Alpha", model_card="Detects retinopathy in fundus images.")
    in_summary = PublishedListingFactory(slug="b-summary", name="Beta", summary="Retinopathy grading from images.")

    assert slugs(selectors.listing_search(query="retinopathy")) == [in_summary.slug, in_card.slug]


def test_prefix_of_a_word_finds_the_listing():
    diabetes = PublishedListingFactory(slug="diabetes", name="Diabetes risk", summary="Type 2 onset.")
    PublishedListingFactory(slug="contracts", name="Contract clauses", summary="Legal text.")

    assert slugs(selectors.listing_search(query="diab")) == [diabetes.slug]
    assert slugs(selectors.listing_search(query="Diab ris")) == [diabetes.slug]
    assert slugs(selectors.listing_search(query="contr")) == ["contracts"]


def test_tags_are_searchable():
    tagged = PublishedListingFactory(slug="tagged", name="Alpha", tags=["radiology"])
    PublishedListingFactory(slug="other", name="Beta")

    assert slugs(selectors.listing_search(query="radiology")) == [tagged.slug]


def test_websearch_exclusion_and_stemming():
    PublishedListingFactory(slug="fraud-cards", name="Card fraud detector", summary="Flags card transactions.")
    PublishedListingFactory(slug="fraud-wire", name="Wire fraud detector", summary="Flags wire transfers.")

    assert slugs(selectors.listing_search(query="fraud -wire")) == ["fraud-cards"]
    # Stemming: "transfer" finds "transfers".
    assert slugs(selectors.listing_search(query="transfer")) == ["fraud-wire"]


def test_query_with_only_punctuation_or_stopwords_does_not_crash():
    PublishedListingFactory(slug="one")
    assert list(selectors.listing_search(query="&|!:*()")) == []
    assert list(selectors.listing_search(query="the")) == []


def test_filters_combine_with_each_other_and_the_query():
    target = PublishedListingFactory(
        slug="target", name="Sepsis alert", domain="healthcare", task="classification", license="mit", tags=["icu"]
    )
    PublishedListingFactory(
        slug="wrong-task", name="Sepsis embedder", domain="healthcare", task="embedding", license="mit"
    )
    PublishedListingFactory(slug="wrong-license", name="Sepsis alert pro", domain="healthcare", task="classification",
                            license="commercial")  # fmt: skip
    PublishedListingFactory(slug="wrong-domain", name="Sepsis finance", domain="finance", task="classification",
                            license="mit")  # fmt: skip
    PublishedListingFactory(slug="no-query-hit", name="Stroke alert", domain="healthcare", task="classification",
                            license="mit")  # fmt: skip

    found = selectors.listing_search(
        query="sepsis", domain=["healthcare"], task=["classification"], license=["mit", "apache-2.0"]
    )
    assert slugs(found) == [target.slug]
    assert slugs(selectors.listing_search(tag="icu")) == [target.slug]
    assert set(slugs(selectors.listing_search(domain=["healthcare", "finance"], task=["classification"]))) == {
        "target", "wrong-license", "wrong-domain", "no-query-hit",
    }  # fmt: skip


def test_organization_filter():
    org = OrganizationFactory()
    mine = PublishedListingFactory(organization=org)
    PublishedListingFactory()

    assert slugs(selectors.listing_search(organization=org)) == [mine.slug]


def test_sort_options():
    now = timezone.now()
    old = PublishedListingFactory(slug="old", name="zebra detector", published_at=now - timedelta(days=3))
    new = PublishedListingFactory(slug="new", name="Aardvark counter", published_at=now)
    mid = PublishedListingFactory(slug="mid", name="mongoose tracker", published_at=now - timedelta(days=1))

    assert slugs(selectors.listing_search(sort="newest")) == [new.slug, mid.slug, old.slug]
    assert slugs(selectors.listing_search(sort="name")) == [new.slug, mid.slug, old.slug]  # case-insensitive
    # Relevance without a query means newest first.
    assert slugs(selectors.listing_search(sort="relevance")) == [new.slug, mid.slug, old.slug]
    assert slugs(selectors.listing_search(query="zebra OR mongoose", sort="name")) == [mid.slug, old.slug]


def test_result_cards_carry_publisher_and_p50():
    PublishedListingFactory(slug="fast", current_version__p50_ms_b1=1.25)
    listing = selectors.listing_search().get()

    assert listing.p50_ms_b1 == pytest.approx(1.25)
    assert listing.organization.name.startswith("Publisher")


def test_facets_count_each_facet_with_the_other_filters_applied():
    PublishedListingFactory(domain="healthcare", task="classification", license="mit")
    PublishedListingFactory(domain="healthcare", task="classification", license="apache-2.0")
    PublishedListingFactory(domain="healthcare", task="regression", license="mit")
    PublishedListingFactory(domain="finance", task="classification", license="mit")
    PublishedListingFactory(domain="legal", task="embedding", license="commercial")
    ListingFactory(domain="science", task="classification", license="mit")  # a draft: never counted

    facets = selectors.listing_facets()
    assert facets["domain"] == [("healthcare", "Healthcare", 3), ("legal", "Legal", 1), ("finance", "Finance", 1)]
    assert dict((v, n) for v, _, n in facets["task"]) == {"classification": 3, "regression": 1, "embedding": 1}

    facets = selectors.listing_facets(domain=["healthcare"], task=["classification"])
    # The domain facet ignores the domain filter (so other domains stay selectable) but applies the task one.
    assert {v: n for v, _, n in facets["domain"]} == {"healthcare": 2, "finance": 1}
    # The task facet applies the domain filter, not its own.
    assert {v: n for v, _, n in facets["task"]} == {"classification": 2, "regression": 1}
    # License is counted with both filters.
    assert {v: n for v, _, n in facets["license"]} == {"mit": 1, "apache-2.0": 1}


def test_facets_apply_the_query_and_keep_selected_values_with_zero():
    PublishedListingFactory(name="Diabetes risk", domain="healthcare")
    PublishedListingFactory(name="Diabetic retinopathy", domain="vision")
    PublishedListingFactory(name="Invoice parser", domain="finance")

    facets = selectors.listing_facets(query="diab", domain=["finance"], sort="name")
    assert {v: n for v, _, n in facets["domain"]} == {"healthcare": 1, "vision": 1, "finance": 0}
    assert selectors.listing_search(query="diab", domain=["finance"]).count() == 0


def test_drafts_and_suspended_listings_never_show_up_in_public_reads():
    public = PublishedListingFactory(slug="public", name="Diabetes public", is_featured=True, domain="healthcare")
    ListingFactory(slug="draft", name="Diabetes draft", is_featured=True, domain="healthcare")
    PublishedListingFactory(slug="suspended", name="Diabetes suspended", is_featured=True, domain="healthcare",
                            status=ListingStatus.SUSPENDED)  # fmt: skip

    assert slugs(selectors.listing_search(query="diabetes")) == [public.slug]
    assert slugs(selectors.listing_search()) == [public.slug]
    assert slugs(selectors.listing_featured(limit=10)) == [public.slug]
    assert slugs(selectors.listing_newest(limit=10)) == [public.slug]
    assert selectors.listing_facets()["domain"] == [("healthcare", "Healthcare", 1)]
    assert {v: n for v, _, n in selectors.listing_domain_counts()}["healthcare"] == 1


def test_draft_is_visible_to_its_members_and_staff_only(make_user, make_org, staff_user):
    owner = make_user()
    org = make_org(owner=owner)
    draft = ListingFactory(organization=org, slug="secret")
    suspended = PublishedListingFactory(organization=org, slug="held", status=ListingStatus.SUSPENDED)
    outsider = make_user()
    make_org(owner=outsider)

    for listing in (draft, suspended):
        assert selectors.listing_get_public(slug=listing.slug, user=owner).pk == listing.pk
        assert selectors.listing_get_public(slug=listing.slug, user=staff_user).pk == listing.pk
        with pytest.raises(Http404):
            selectors.listing_get_public(slug=listing.slug, user=outsider)
        with pytest.raises(Http404):
            selectors.listing_get_public(slug=listing.slug, user=None)
    with pytest.raises(Http404):
        selectors.listing_get_public(slug="does-not-exist")


def test_versions_public_see_published_and_deprecated_members_see_all(make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    listing = PublishedListingFactory(organization=org)  # has 1.0.0 published
    VersionFactory(listing=listing, version="0.9.0", status=VersionStatus.DEPRECATED)
    VersionFactory(listing=listing, version="2.0.0", status=VersionStatus.IN_REVIEW, published_at=None)
    VersionFactory(listing=listing, version="1.1.0", status=VersionStatus.REJECTED, published_at=None)

    public = [v.version for v in selectors.version_list_for_listing(listing=listing, user=make_user())]
    assert public == ["1.0.0", "0.9.0"]
    assert [v.version for v in selectors.version_list_for_listing(listing=listing, user=None)] == public
    members = [v.version for v in selectors.version_list_for_listing(listing=listing, user=owner)]
    assert members == ["2.0.0", "1.1.0", "1.0.0", "0.9.0"]


def test_suggestions_find_close_names_for_a_typo():
    PublishedListingFactory(slug="retino", name="Retinopathy grader")
    PublishedListingFactory(slug="other", name="Invoice parser")

    assert selectors.listing_search(query="retinopaty").count() == 0
    assert slugs(selectors.listing_suggestions(query="retinopaty")) == ["retino"]


def test_prefix_tsquery_keeps_only_word_characters():
    assert selectors._prefix_tsquery("diab ris") == "diab:* & ris:*"
    assert selectors._prefix_tsquery("a&b|c:*!(") == "a:* & b:* & c:*"
    assert selectors._prefix_tsquery('"exact phrase"') is None
    assert selectors._prefix_tsquery("fraud -wire") is None
    assert selectors._prefix_tsquery("!!!") is None
