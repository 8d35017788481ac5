"""Catalog pages: home, search, listing page; Markdown sanitising; a constant number of queries per page."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from catalog.markdown import markdown_render
from catalog.models import ListingStatus, VersionStatus
from tests.catalog.factories import ListingFactory, PublishedListingFactory, TagFactory, VersionFactory

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode()


# ---- Markdown ------------------------------------------------------------------------------------


def test_markdown_renders_tables_and_fenced_code():
    html = markdown_render("| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint('x < y')\n```\n")
    assert "<table>" in html and "<td>1</td>" in html
    assert "<pre><code>print(&#x27;x &lt; y&#x27;)" in html or "<pre><code>print('x &lt; y')" in html


def test_markdown_strips_scripts_handlers_and_script_urls():
    html = markdown_render(
        "Hello <script>alert('x')</script>\n\n"
        "[click](javascript:alert(1)) [ok](https://example.com/docs)\n\n"
        '<img src="https://example.com/a.png" alt="chart" onerror="alert(1)">\n\n'
        '<a href="JaVaScRiPt:alert(2)">caps</a> <iframe src="https://evil.example"></iframe>'
        '<p style="color:red" onclick="alert(3)">styled</p>'
    )
    assert "<script" not in html and "alert('x')" not in html
    assert "javascript:" not in html.lower()
    assert "onerror" not in html and "onclick" not in html and "style=" not in html
    assert "<iframe" not in html
    assert '<a href="https://example.com/docs" rel="nofollow noopener">ok</a>' in html
    assert '<img src="https://example.com/a.png" alt="chart">' in html


def test_markdown_heading_offset_demotes_headings():
    assert markdown_render("# Title\n\n###### Deep", heading_offset=2) == "<h3>Title</h3>\n<h6>Deep</h6>"
    assert markdown_render("# Title") == "<h1>Title</h1>"


def test_facet_label_names_each_facet_value_and_passes_unknown_ones_through():
    from catalog.models import Domain, LicenseTemplate, Task
    from catalog.templatetags.catalog_tags import facet_label

    for facet, choices in (("domain", Domain), ("task", Task), ("license", LicenseTemplate)):
        assert [facet_label(value, facet) for value in choices.values] == list(choices.labels)
    assert facet_label("made-up", "domain") == "made-up" and facet_label("healthcare", "nope") == "healthcare"


def test_markdown_of_empty_text_is_empty():
    assert markdown_render("") == "" and markdown_render(None) == ""


# ---- home ----------------------------------------------------------------------------------------


def test_home_shows_featured_and_newest_and_domain_shortcuts(client):
    PublishedListingFactory(name="Featured sepsis model", is_featured=True, domain="healthcare")
    PublishedListingFactory(name="Invoice parser", domain="finance")
    ListingFactory(name="Secret draft", is_featured=True)

    response = client.get("/")

    assert response.status_code == 200
    body = text(response)
    assert "Featured sepsis model" in body and "Invoice parser" in body
    assert "Secret draft" not in body
    assert 'href="/search/?domain=healthcare"' in body
    assert 'role="search"' in body and '<label for="home-q">' in body


# ---- search --------------------------------------------------------------------------------------


def test_search_page_shows_results_facets_and_cards(client):
    PublishedListingFactory(
        name="Diabetes risk", summary="Onset risk from labs.", domain="healthcare", current_version__p50_ms_b1=1.5
    )
    PublishedListingFactory(name="Diabetic retinopathy", domain="vision", task="detection")
    PublishedListingFactory(name="Invoice parser", domain="finance")

    response = client.get("/search/", {"q": "diab"})

    assert response.status_code == 200
    body = text(response)
    assert "Diabetes risk" in body and "Diabetic retinopathy" in body and "Invoice parser" not in body
    assert "Onset risk from labs." in body and "1.5 ms" in body and "by Publisher" in body
    assert "2 specialists" in body
    # Facet checkboxes with labels and counts.
    assert re.search(r'id="f-domain-healthcare" name="domain" value="healthcare"', body)
    assert re.search(r'<label for="f-domain-vision">Vision <span class="facet-count">1</span>', body)
    assert "f-domain-finance" not in body


def test_search_page_filters_and_keeps_other_facet_values(client):
    PublishedListingFactory(name="Diabetes risk", domain="healthcare")
    PublishedListingFactory(name="Diabetic retinopathy", domain="vision")

    body = text(client.get("/search/?q=diab&domain=vision&domain=bogus"))

    assert "Diabetic retinopathy" in body and "Diabetes risk" not in body
    assert re.search(r'value="vision" checked', body)
    assert re.search(r'<label for="f-domain-healthcare">Healthcare <span class="facet-count">1</span>', body)
    assert 'aria-label="Remove filter Vision"' in body


def test_search_page_paginates_and_sorts(client):
    for i in range(25):
        PublishedListingFactory(name=f"Model {i:02d}")

    first = text(client.get("/search/", {"sort": "name"}))
    second = text(client.get("/search/", {"sort": "name", "page": 2}))

    assert "Model 00" in first and "Model 19" in first and "Model 20" not in first
    assert "Model 20" in second and "Model 24" in second and "Model 00" not in second
    assert "Page 2 of 2" in second and "?sort=name&amp;page=1" in second
    assert 'value="name" selected' in first


def test_search_no_results_state_offers_suggestions(client):
    PublishedListingFactory(slug="retino", name="Retinopathy grader", domain="vision")

    body = text(client.get("/search/", {"q": "retinopaty", "domain": "vision"}))

    assert "No specialists match" in body and "with these filters" in body
    assert "Did you mean" in body and 'href="/s/retino/"' in body
    assert "Search again without filters" in body


def test_search_hides_drafts_and_suspended(client):
    PublishedListingFactory(name="Visible diabetes")
    ListingFactory(name="Draft diabetes")
    PublishedListingFactory(name="Suspended diabetes", status=ListingStatus.SUSPENDED)

    body = text(client.get("/search/", {"q": "diabetes"}))

    assert "Visible diabetes" in body and "Draft diabetes" not in body and "Suspended diabetes" not in body


# ---- listing page --------------------------------------------------------------------------------


def test_listing_page_shows_card_signature_numbers_versions_and_license(client):
    listing = PublishedListingFactory(
        slug="sepsis",
        name="Sepsis alert",
        summary="Early warning from vitals.",
        model_card="## Intended use\n\nICU triage.\n\n<script>alert('x')</script>",
        license="custom",
        license_text="No use in production without a signed agreement.",
        tags=["icu", "vitals"],
    )
    VersionFactory(listing=listing, version="0.9.0", status=VersionStatus.DEPRECATED, changelog="Beta **release**.")
    VersionFactory(listing=listing, version="2.0.0", status=VersionStatus.IN_REVIEW, changelog="Unreleased work.")

    response = client.get("/s/sepsis/")

    assert response.status_code == 200
    body = text(response)
    assert '<h1 id="listing-title">Sepsis alert</h1>' in body and "Early warning from vitals." in body
    # The card's headings sit below the page's "Model card" heading.
    assert "<h4>Intended use</h4>" in body and "<script>alert" not in body
    assert 'href="/search/?tag=icu"' in body
    # Signature table.
    assert "<caption>Inputs</caption>" in body and "<code>features</code>" in body
    assert "<code>FP32</code>" in body and "<code>[N, 8]</code>" in body and "<code>probabilities</code>" in body
    # Verified numbers.
    assert "Cold load" in body and "35.2 ms" in body
    assert re.search(r"<th scope=\"row\">1</th><td>0.42 ms</td><td>0.67 ms</td>", body)
    assert re.search(r"<th scope=\"row\">8</th><td>1.1 ms</td><td>1.5 ms</td>", body)
    assert "Measured on</dt><dd>CPU</dd>" in body and "47.1\xa0KB" in body and "ai.onnx 17, ai.onnx.ml 3" in body
    # Versions: public ones only, with changelogs.
    assert "0.9.0" in body and "Beta <strong>release</strong>." in body and "Deprecated" in body
    assert "2.0.0" not in body and "Unreleased work." not in body
    # License.
    assert "Custom terms" in body and "No use in production without a signed agreement." in body
    # Anonymous: no report or manage link.
    assert "/moderation/report/sepsis/" not in body and "/publish/listings/sepsis/" not in body


def test_listing_page_links_for_signed_in_users_and_members(client, make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    PublishedListingFactory(slug="sepsis", organization=org)

    client.force_login(make_user())
    body = text(client.get("/s/sepsis/"))
    assert 'href="/moderation/report/sepsis/"' in body and "Report this listing" in body
    assert "/publish/listings/sepsis/" not in body

    client.force_login(owner)
    body = text(client.get("/s/sepsis/"))
    assert 'href="/publish/listings/sepsis/"' in body


def test_draft_listing_page_is_404_to_others_and_visible_to_members(client, make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    draft = ListingFactory(slug="wip", name="Work in progress", organization=org)
    VersionFactory(listing=draft, version="0.1.0", status=VersionStatus.READY, published_at=None)

    assert client.get("/s/wip/").status_code == 404
    client.force_login(make_user())
    assert client.get("/s/wip/").status_code == 404

    client.force_login(owner)
    response = client.get("/s/wip/")
    assert response.status_code == 200
    body = text(response)
    assert "Work in progress" in body and "only visible to its organization" in body
    assert "0.1.0" in body and "Ready for review" in body


def test_suspended_listing_page_is_404_to_the_public(client):
    PublishedListingFactory(slug="held", status=ListingStatus.SUSPENDED)
    assert client.get("/s/held/").status_code == 404
    assert client.get("/s/nope/").status_code == 404


# ---- a constant number of queries ----------------------------------------------------------------


def _seed(count: int, start: int) -> None:
    tags = [TagFactory(name=f"t{start}-{i}") for i in range(3)]
    for i in range(start, start + count):
        listing = PublishedListingFactory(
            slug=f"bulk-{i}", name=f"Diabetes model {i}", is_featured=i % 2 == 0, domain="healthcare", tags=tags
        )
        VersionFactory(listing=listing, version="0.9.0", status=VersionStatus.DEPRECATED)


def _count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


PAGES = ["/", "/search/", "/search/?q=diab&domain=healthcare&sort=name", "/s/bulk-0/"]


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_pages_use_a_constant_number_of_queries(client, make_user, django_assert_max_num_queries, signed_in):
    if signed_in:
        client.force_login(make_user())
    _seed(3, start=0)
    few = {url: _count_queries(client, url) for url in PAGES}
    # Sanity bound, so a page that loads per-listing rows cannot hide behind a large baseline.
    for url, n in few.items():
        assert n <= (3 if not signed_in else 9), (url, n)

    _seed(27, start=3)
    for url in PAGES:
        with django_assert_max_num_queries(few[url]):
            client.get(url)


def test_anonymous_page_query_counts(client, django_assert_num_queries):
    _seed(30, start=0)
    # featured + newest + domain counts
    with django_assert_num_queries(3):
        client.get("/")
    # facets and total in one aggregate + the page
    with django_assert_num_queries(2):
        client.get("/search/?q=diab")
    # listing (+organization, current version) + tags + versions
    with django_assert_num_queries(3):
        client.get("/s/bulk-1/")
