#!/usr/bin/env python
"""Catalog benchmark: server-side time of the search page and the listing page over 10,000 listings.

    .venv/bin/python bench/catalog.py [--listings 10000] [--requests 300] [--reseed] [--check]

Needs PostgreSQL (the search runs on its full-text index): DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/marketplace_bench. The script creates and migrates that database,
seeds it once (bulk inserts, then the search document of every listing in one UPDATE) and reuses the
seed on later runs. Each page is requested in-process through Django's test client (the whole
middleware, view and template stack, no network), after a warm-up, and p50/p95 are printed per page
type next to its target: search p95 ≤ 50 ms, listing page p95 ≤ 30 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/marketplace_bench"
TARGETS_P95_MS = {"search": 50.0, "listing": 30.0}
BENCH_ORG_PREFIX = "bench-"

# ---- realistic, varied text ----------------------------------------------------------------------

SUBJECTS: dict[str, list[str]] = {
    "healthcare": ["diabetes", "sepsis", "diabetic retinopathy", "pneumonia", "arrhythmia", "melanoma",
                   "stroke", "readmission", "heart failure", "chronic kidney disease", "asthma", "ICU mortality",
                   "drug interaction", "radiology report", "clinical note", "hospital triage"],
    "legal": ["contract clause", "NDA", "case law", "court ruling", "privacy policy", "lease agreement",
              "patent claim", "regulatory filing", "GDPR compliance", "employment contract"],
    "finance": ["credit risk", "card fraud", "invoice", "transaction anomaly", "churn", "loan default",
                "earnings call", "anti money laundering", "expense receipt", "insurance claim"],
    "code": ["code review", "SQL query", "bug report", "commit message", "vulnerability", "log line",
             "stack trace", "API misuse", "license header", "test flakiness"],
    "vision": ["defect", "license plate", "crop disease", "satellite roof", "retail shelf", "face mask",
               "wildlife camera", "document layout", "handwriting", "X-ray fracture"],
    "language": ["sentiment", "intent", "language identification", "toxicity", "named entity", "spam",
                 "support ticket", "product review", "headline", "question"],
    "science": ["protein stability", "molecule solubility", "gene expression", "galaxy morphology",
                "seismic event", "weather station", "particle jet", "soil moisture"],
    "retail": ["demand forecast", "basket", "product category", "price elasticity", "return risk",
               "customer lifetime value", "store footfall", "recommendation"],
    "industry": ["predictive maintenance", "bearing fault", "vibration anomaly", "energy load", "turbine",
                 "weld seam", "pipeline leak", "quality control"],
    "other": ["generic tabular", "time series", "audio event", "bird song", "sports outcome", "music genre"],
}  # fmt: skip
KINDS: dict[str, list[str]] = {
    "classification": ["Classifier", "Detector", "Risk Scorer", "Triage Model", "Screener", "Tagger"],
    "regression": ["Estimator", "Forecaster", "Predictor", "Regressor", "Scorer"],
    "embedding": ["Embedder", "Encoder", "Similarity Model", "Retriever"],
    "token-classification": ["Entity Tagger", "Span Extractor", "Redactor", "Clause Finder"],
    "sequence-to-sequence": ["Summarizer", "Rewriter", "Translator", "Normalizer"],
    "detection": ["Object Detector", "Locator", "Segmenter", "Spotter"],
    "other": ["Model", "Specialist", "Toolkit"],
}
FLAVOURS = ["", "", "", "Lite", "Pro", "Tiny", "Base", "Large", "XL", "Fast", "v2", "Edge", "Clinical",
            "Multilingual", "EU", "US", "Nordic", "Compact", "Turbo", "Distilled"]  # fmt: skip
TAGS = ["tabular", "onnx", "gradient-boosting", "xgboost", "lightgbm", "sklearn", "pytorch", "transformer",
        "cnn", "rnn", "distilled", "quantized", "int8", "fp16", "cpu-friendly", "gpu", "low-latency", "batch",
        "explainable", "shap", "calibrated", "multilingual", "english", "german", "french", "spanish",
        "hipaa", "gdpr", "soc2", "on-prem", "edge", "mobile", "realtime", "streaming", "audit-ready",
        "icu", "radiology", "cardiology", "oncology", "ophthalmology", "dermatology", "pharma", "claims",
        "kyc", "aml", "credit", "fraud", "invoices", "receipts", "contracts", "compliance", "litigation",
        "patents", "code", "security", "devops", "logs", "sql", "ocr", "layout", "satellite", "agriculture",
        "manufacturing", "energy", "iot", "predictive-maintenance", "retail", "ecommerce", "recsys",
        "nlp", "ner", "sentiment", "toxicity", "moderation", "speech", "audio", "time-series", "forecasting",
        "anomaly-detection", "chemistry", "biology", "genomics", "astronomy", "climate", "research"]  # fmt: skip
DATA_SOURCES = ["de-identified EHR records from three hospitals", "a public benchmark and 40k in-house samples",
                "synthetic data validated by domain experts", "annotated documents from partner firms",
                "sensor logs from 120 sites", "five years of anonymised transactions",
                "crowd-labelled images with expert review", "open datasets under permissive licenses"]  # fmt: skip
METRICS = ["AUROC 0.{n}", "F1 0.{n}", "accuracy 0.{n}", "MAE {m}", "recall@10 0.{n}", "mAP 0.{n}"]
SENTENCES = [
    "The model is small enough to run on a single CPU core with sub-millisecond latency.",
    "It was exported to ONNX with opset 17 and validated against the reference implementation.",
    "Inputs must be normalised as described in the preprocessing section.",
    "Performance degrades on populations that are under-represented in the training data.",
    "Do not use it as the sole basis for decisions that affect individuals.",
    "Thresholds were calibrated on a held-out set; recalibrate for your own base rates.",
    "We publish a new version every quarter with refreshed data.",
    "Batching improves throughput roughly linearly up to a batch of eight.",
    "The output is a probability per class; the argmax is not always the right decision rule.",
    "Feature importance is stable across versions, which helps with audits.",
    "Evaluation used a temporal split so that no future data leaked into training.",
    "Support is available from the publisher by email within two business days.",
]


def _name_and_text(rng: random.Random, domain: str, task: str) -> tuple[str, str, str, str]:
    subject = rng.choice(SUBJECTS[domain])
    kind = rng.choice(KINDS[task])
    flavour = rng.choice(FLAVOURS)
    name = " ".join(p for p in (subject[:1].upper() + subject[1:], kind, flavour) if p)
    metric = rng.choice(METRICS).format(n=rng.randint(70, 99), m=round(rng.uniform(0.5, 9), 2))
    source = rng.choice(DATA_SOURCES)
    summary = f"{kind} for {subject} trained on {source}; {metric} on a held-out set."[:280]
    body = " ".join(rng.sample(SENTENCES, 4))
    limits = " ".join(rng.sample(SENTENCES, 2))
    card = (
        f"# {name}\n\n## Intended use\n\n{kind} for **{subject}** in {domain} workflows. {body}\n\n"
        f"## Training data\n\nTrained on {source}.\n\n## Evaluation\n\n| metric | value |\n|---|---|\n"
        f"| {metric.split()[0]} | {metric.split()[1]} |\n| p50 latency | {rng.uniform(0.2, 9):.2f} ms |\n\n"
        f"## Limitations\n\n{limits}\n\n```python\nclient.infer('{subject.replace(' ', '-')}', inputs)\n```\n"
    )
    return name, summary, card, subject


def _report(rng: random.Random) -> dict:
    p50 = round(rng.uniform(0.15, 12.0), 3)
    return {
        "metrics": {
            "cold_load_ms": round(rng.uniform(20, 900), 1),
            "p50_ms_b1": p50,
            "p95_ms_b1": round(p50 * rng.uniform(1.1, 2.0), 3),
            "p50_ms_b8": round(p50 * rng.uniform(1.5, 5), 3),
            "p95_ms_b8": round(p50 * rng.uniform(5, 9), 3),
            "batchable": rng.random() > 0.2,
            "provider": rng.choice(["CPUExecutionProvider", "CUDAExecutionProvider"]),
        },
        "model": {
            "ir_version": rng.choice([8, 9, 10]),
            "opsets": {"": rng.choice([13, 15, 17, 18]), "ai.onnx.ml": 3},
            "producer_name": rng.choice(["skl2onnx", "pytorch", "tf2onnx", "onnxmltools"]),
            "node_count": rng.randint(5, 4000),
            "parameter_bytes": rng.randint(20_000, 400_000_000),
        },
    }


def _signature(rng: random.Random) -> dict:
    width = rng.choice([4, 8, 16, 32, 128, 768])
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, width]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, rng.choice([2, 3, 5, 10])]},
        ],
    }


# ---- database ------------------------------------------------------------------------------------


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` when it does not exist yet."""
    import environ
    import psycopg
    from psycopg import sql

    config = environ.Env.db_url_config(url)
    if config["ENGINE"] != "django.db.backends.postgresql":
        sys.exit(f"bench/catalog.py needs PostgreSQL; DATABASE_URL is {url!r}")
    with psycopg.connect(
        dbname="postgres",
        host=config.get("HOST") or "127.0.0.1",
        port=int(config.get("PORT") or 5432),
        user=config.get("USER") or "postgres",
        password=config.get("PASSWORD") or None,
        autocommit=True,
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config["NAME"])))
            print(f"created database {config['NAME']}")


def seed(*, listings: int, reseed: bool, rng: random.Random) -> None:
    from django.db import connection, transaction
    from django.db.models import OuterRef, Subquery
    from django.utils import timezone

    from accounts.models import Organization
    from catalog.models import Domain, LicenseTemplate, Listing, ListingStatus, Tag, Task, Version, VersionStatus
    from catalog.search import listing_search_vector

    bench_listings = Listing.objects.filter(organization__slug__startswith=BENCH_ORG_PREFIX)
    public = bench_listings.filter(status=ListingStatus.PUBLISHED).count()
    if public >= listings and not reseed:
        print(f"reusing the seed: {public:,} public listings")
        return
    started = time.perf_counter()
    with transaction.atomic():
        bench_listings.update(current_version=None)
        Version.objects.filter(listing__in=bench_listings).delete()
        bench_listings.delete()
        Organization.objects.filter(slug__startswith=BENCH_ORG_PREFIX).delete()

        orgs = Organization.objects.bulk_create(
            Organization(
                name=f"{rng.choice(['Acme', 'Nordic', 'Helix', 'Quant', 'Vertex', 'Lumen'])} Labs {i}",
                slug=f"{BENCH_ORG_PREFIX}{i}",
                description="A benchmark publisher.",
            )  # fmt: skip
            for i in range(max(20, listings // 50))
        )
        for name in TAGS:
            Tag.objects.get_or_create(name=name)
        tags = list(Tag.objects.filter(name__in=TAGS))
        now = timezone.now()
        domains, tasks, licenses = Domain.values, Task.values, LicenseTemplate.values
        hidden = listings // 20  # 5% drafts and suspended listings that the catalog must hide
        rows = []
        for i in range(listings + hidden):
            domain = rng.choice(domains)
            task = rng.choice(tasks)
            name, summary, card, _subject = _name_and_text(rng, domain, task)
            status = ListingStatus.PUBLISHED if i < listings else rng.choice([ListingStatus.DRAFT,
                                                                               ListingStatus.SUSPENDED])  # fmt: skip
            published = now - timedelta(minutes=rng.randint(0, 2 * 365 * 24 * 60))
            rows.append(
                Listing(
                    organization=rng.choice(orgs),
                    name=name,
                    slug=f"bench-{i}",
                    summary=summary,
                    model_card=card,
                    domain=domain,
                    task=task,
                    license=rng.choice(licenses),
                    status=status,
                    license_text="Terms of use for subscribers." if rng.random() < 0.2 else "",
                    is_featured=rng.random() < 0.01,
                    featured_at=published if rng.random() < 0.01 else None,
                    published_at=published if status == ListingStatus.PUBLISHED else None,
                )  # fmt: skip
            )
        created = Listing.objects.bulk_create(rows, batch_size=2000)
        Listing.tags.through.objects.bulk_create(
            [
                Listing.tags.through(listing_id=listing.pk, tag_id=tag.pk)
                for listing in created
                for tag in rng.sample(tags, rng.randint(2, 5))
            ],
            batch_size=5000,
        )
        versions = []
        for listing in created:
            count = rng.choice([1, 1, 2, 3])
            for n in range(count):
                is_last = n == count - 1
                version_status = (
                    (VersionStatus.PUBLISHED if listing.status == ListingStatus.PUBLISHED else VersionStatus.READY)
                    if is_last
                    else VersionStatus.DEPRECATED
                )
                versions.append(
                    Version(
                        listing=listing,
                        version=f"1.{n}.0",
                        major=1,
                        minor=n,
                        patch=0,
                        changelog=f"Release 1.{n}.0: " + rng.choice(SENTENCES),
                        status=version_status,
                        artifact_key=f"bench/{listing.pk}/1.{n}.0/model.onnx",
                        artifact_size=rng.randint(10**4, 10**8),
                        artifact_sha256=f"{listing.pk:032x}{n:032x}",
                        signature=_signature(rng),
                        validation_report=_report(rng),
                        published_at=listing.published_at,
                    )  # fmt: skip
                )
        Version.objects.bulk_create(versions, batch_size=2000)
        # One UPDATE sets every listing's stable version and builds its search document (the same
        # expression catalog.search.listing_search_document_update uses), so rows are rewritten once.
        stable = Version.objects.filter(listing=OuterRef("pk"), status=VersionStatus.PUBLISHED).values("pk")[:1]
        bench_listings.update(current_version=Subquery(stable), search_vector=listing_search_vector())
    with connection.cursor() as cursor:
        # What autovacuum does in steady state: drop the row versions the UPDATEs above left behind.
        cursor.execute("VACUUM (ANALYZE) catalog_listing, catalog_version, catalog_tag, catalog_listing_tags")
    print(
        f"seeded {listings:,} public + {hidden:,} hidden listings, {len(versions):,} versions "
        f"in {time.perf_counter() - started:.1f} s"
    )


# ---- measuring -----------------------------------------------------------------------------------


def search_urls(rng: random.Random) -> list[str]:
    queries: list[dict[str, str | list[str]]] = [
        {}, {"q": "diabetes"}, {"q": "diab"}, {"q": "contract clause"}, {"q": "card fraud detector"},
        {"q": "retinopathy screening"}, {"q": "sepsis icu"}, {"q": "invoice"}, {"q": "anomaly"},
        {"q": "defect", "domain": "vision"}, {"q": "embedder"}, {"q": "risk", "domain": "healthcare"},
        {"domain": "finance", "task": "classification"}, {"license": "mit", "sort": "name"},
        {"q": "model", "sort": "newest"}, {"q": "clas"}, {"q": "forecast", "domain": ["retail", "industry"]},
        {"q": "\"credit risk\" -lite"}, {"tag": "fraud"}, {"q": "turbine", "page": "2"},
        {"sort": "newest", "page": "5"}, {"q": "trained", "license": ["apache-2.0", "cc-by-4.0"]},
        {"q": "detector", "domain": ["vision", "industry"], "task": "detection", "page": "3"},
        {"q": "xyzzy plugh"},
    ]  # fmt: skip
    return [f"/search/?{urlencode(q, doseq=True)}" for q in queries]


def measure(client, urls: list[str], *, requests: int, warmup: int, rng: random.Random) -> list[float]:
    for url in urls[:50]:
        client.get(url)
    for _ in range(warmup):
        client.get(rng.choice(urls))
    timings = []
    for i in range(requests):
        url = urls[i % len(urls)]
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {url} returned {response.status_code}")
    return timings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def queries_per_request(client, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        client.get(url)
    return len(ctx.captured_queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=10_000, help="public listings to seed (default 10,000)")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per page type")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests per page type first")
    parser.add_argument("--reseed", action="store_true", help="drop and recreate the benchmark rows")
    parser.add_argument("--check", action="store_true", help="exit 1 when a p95 target is missed")
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    args = parser.parse_args()

    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from catalog.models import Listing, ListingStatus

    call_command("migrate", verbosity=0, interactive=False)
    rng = random.Random(args.seed)
    seed(listings=args.listings, reseed=args.reseed, rng=rng)

    slugs = list(
        Listing.objects.filter(status=ListingStatus.PUBLISHED, organization__slug__startswith=BENCH_ORG_PREFIX)
        .order_by("?")
        .values_list("slug", flat=True)[:500]
    )
    pages = {
        "home": ["/"],
        "search": search_urls(rng),
        "listing": [f"/s/{slug}/" for slug in slugs],
        "api-list": [u.replace("/search/", "/api/v1/listings") for u in search_urls(rng)],
        "api-detail": [f"/api/v1/listings/{slug}" for slug in slugs[:200]],
    }
    client = Client()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nCPUs: {os.cpu_count()}, load average before measuring: {load}")
    print(f"{'page':<11} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'queries':>8}  target")
    failed = False
    for name, urls in pages.items():
        timings = measure(client, urls, requests=args.requests, warmup=args.warmup, rng=rng)
        p50, p95 = statistics.median(timings), percentile(timings, 95)
        queries = max(queries_per_request(client, url) for url in urls[:5])
        target = TARGETS_P95_MS.get(name)
        verdict = ""
        if target is not None:
            ok = p95 <= target
            failed |= not ok
            verdict = f"p95 ≤ {target:.0f} ms {'OK' if ok else 'MISSED'}"
        print(f"{name:<11} {len(timings):>8} {p50:>8.2f} {p95:>8.2f} {max(timings):>8.2f} {queries:>8}  {verdict}")
    return 1 if (failed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
