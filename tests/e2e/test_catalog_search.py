"""A buyer searches the catalog in a real browser: ranked full-text results, a domain facet with its
counts, sorting by name, the listing page, and a partial word that still finds what it starts.

The listings come from PublishedListingFactory (public rows with their search documents); the pages
read nothing from object storage or the worker, so this test needs neither.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.catalog.factories import PublishedListingFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# "risk" is in the name of the first, the summary of the second and only the model card of the third:
# name (weight A) > summary (B) > model card (C) is the order relevance must give.
LISTINGS = [
    {
        "name": "Credit risk scorer",
        "domain": "finance",
        "task": "classification",
        "license": "apache-2.0",
        "summary": "Scores loan applications from bureau and application features.",
        "tags": ["lending", "tabular"],
    },
    {
        "name": "Diabetes progression regressor",
        "domain": "healthcare",
        "task": "regression",
        "license": "mit",
        "summary": "Estimates the one-year progression risk of diabetes from ten baseline measurements.",
        "model_card": "## Intended use\n\nResearch on disease progression.\n\n"
        "## Training data\n\nThe scikit-learn diabetes data set: 442 patients.\n",
        "tags": ["tabular"],
    },
    {
        "name": "Acute sepsis early warning",
        "domain": "healthcare",
        "task": "classification",
        "license": "commercial",
        "summary": "Flags ICU patients who may be developing sepsis, hours ahead.",
        "model_card": "## Limitations\n\nA high score means elevated risk, not a diagnosis.\n",
    },
    {
        "name": "Clinical note de-identifier",
        "domain": "healthcare",
        "task": "token-classification",
        "license": "apache-2.0",
        "summary": "Finds names, dates and record numbers in clinical notes.",
    },
    {
        "name": "Contract clause classifier",
        "domain": "legal",
        "task": "classification",
        "license": "cc-by-4.0",
        "summary": "Labels the clauses of commercial contracts.",
    },
    {
        "name": "Wine cultivar classifier",
        "domain": "science",
        "task": "classification",
        "license": "mit",
        "summary": "Tells three wine cultivars apart from a chemical analysis.",
    },
]


def _result_names(page: Page) -> list[str]:
    return page.locator(".result-list .listing-card-title").all_inner_texts()


def test_catalog_search_facets_sort_and_listing_page(page, screenshot, live_server) -> None:
    for fields in LISTINGS:
        PublishedListingFactory(**fields)

    page.goto("/")
    expect(page.get_by_role("heading", name="Newest specialists")).to_be_visible()
    screenshot(page, "search-01-home")
    search_box = page.get_by_role("main").get_by_label("Search specialists")
    search_box.fill("risk")
    page.get_by_role("main").get_by_role("button", name="Search").click()

    # Ranked: name match first, then summary, then model card.
    expect(page).to_have_url(re.compile(r"/search/\?q=risk$"))
    expect(page.get_by_role("heading", name="Results for “risk”")).to_be_visible()
    count = page.locator(".results-count")
    expect(count).to_have_text("3 specialists")
    expect(page.locator(".result-list .listing-card")).to_have_count(3)
    assert _result_names(page) == ["Credit risk scorer", "Diabetes progression regressor", "Acute sepsis early warning"]
    expect(page.get_by_label("Sort by")).to_have_value("relevance")
    domain_facet = page.get_by_role("group", name="Domain")
    expect(domain_facet.get_by_role("checkbox")).to_have_count(2)  # only domains with matches
    expect(domain_facet.get_by_role("checkbox", name="Healthcare 2")).not_to_be_checked()
    expect(domain_facet.get_by_role("checkbox", name="Finance 1")).to_be_visible()
    screenshot(page, "search-02-results")

    # A domain facet: the form submits itself on change.
    domain_facet.get_by_role("checkbox", name="Healthcare 2").check()
    expect(page).to_have_url(re.compile(r"[?&]domain=healthcare"))
    expect(count).to_have_text("2 specialists")
    assert _result_names(page) == ["Diabetes progression regressor", "Acute sepsis early warning"]
    domain_facet = page.get_by_role("group", name="Domain")
    expect(domain_facet.get_by_role("checkbox", name="Healthcare 2")).to_be_checked()
    # Other domains keep their counts, so the buyer can widen the search.
    expect(domain_facet.get_by_role("checkbox", name="Finance 1")).not_to_be_checked()
    expect(page.get_by_role("group", name="Task").get_by_role("checkbox", name="Regression 1")).to_be_visible()
    expect(page.get_by_role("list", name="Active filters")).to_contain_text("Healthcare")
    screenshot(page, "search-03-facet")

    # Sort by name: the same two, alphabetically.
    page.get_by_label("Sort by").select_option("name")
    expect(page).to_have_url(re.compile(r"[?&]sort=name"))
    expect(page.get_by_label("Sort by")).to_have_value("name")
    expect(page.locator(".result-list .listing-card-title").first).to_have_text("Acute sepsis early warning")
    assert _result_names(page) == ["Acute sepsis early warning", "Diabetes progression regressor"]
    expect(page.get_by_role("group", name="Domain").get_by_role("checkbox", name="Healthcare 2")).to_be_checked()

    # The listing page: model card, signature table, verified numbers.
    page.get_by_role("link", name="Diabetes progression regressor").click()
    expect(page.get_by_role("heading", name="Diabetes progression regressor", level=1)).to_be_visible()
    model_card = page.get_by_role("region", name="Model card")
    expect(model_card.get_by_role("heading", name="Training data")).to_be_visible()
    expect(model_card).to_contain_text("442 patients")
    signature = page.get_by_role("region", name="Signature")
    inputs = signature.get_by_role("table").filter(has=page.locator("caption", has_text="Inputs"))
    expect(inputs.locator("tbody tr")).to_have_count(1)
    expect(inputs.locator("tbody tr td")).to_have_text(["features", "FP32", "[N, 8]"])
    outputs = signature.get_by_role("table").filter(has=page.locator("caption", has_text="Outputs"))
    expect(outputs.locator("tbody tr td").first).to_have_text("probabilities")
    expect(page.get_by_role("region", name="Verified by the platform")).to_contain_text("0.42")
    assert page.js_errors == []
    screenshot(page, "search-04-listing")

    # Part of a word finds the word: "diab" → "Diabetes".
    page.get_by_label("Search specialists").first.fill("diab")
    page.get_by_label("Search specialists").first.press("Enter")
    expect(page.get_by_role("heading", name="Results for “diab”")).to_be_visible()
    expect(count).to_have_text("1 specialist")
    assert _result_names(page) == ["Diabetes progression regressor"]
    screenshot(page, "search-05-partial-word")
