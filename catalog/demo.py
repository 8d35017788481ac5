"""Demo data: three users, two organizations and real specialists trained on scikit-learn's data sets.

Every specialist goes through the same pipeline a publisher uses: listing_create, version_create,
an upload to the presigned URL over HTTP, version_upload_complete, validation in the Celery worker,
version_submit, and an admin's version_approve. Running it twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEMO_PASSWORD = "demo-pass-123"
# Every demo listing offers this plan; the buyer organization subscribes to the first listings below.
DEMO_PLAN_NAME = "Free"
DEMO_PLAN_QUOTA_UNITS = 10_000
DEMO_SUBSCRIBED_SLUGS = ("iris-species", "wine-cultivar", "digit-recognizer-8x8")
# Paid plans on the commercial listings (name, kind, monthly fee, included units, price per 1,000 units, in cents),
# and the one the buyer pays for through the local checkout with the test card, so the demo shows the money flow.
DEMO_PAID_PLANS = {
    "coastal-house-prices": [("Pro", "flat", 4900, 100_000, 50), ("Pay as you go", "metered", 0, None, 200)],
    "credit-default-warning": [("Team", "flat", 1900, 50_000, 40), ("Pay as you go", "metered", 0, None, 150)],
}
DEMO_PAID_SUBSCRIPTION = ("coastal-house-prices", "Pay as you go")
DEMO_TEST_CARD = "4242 4242 4242 4242"
# `make run` sets DEMO_API_KEY (scripts/run.py documents the value) so its banner can print a working
# curl command; without it no key with a known value is ever created.
DEMO_API_KEY_ENV = "DEMO_API_KEY"
DEMO_API_KEY_NAME = "Demo key (make run)"


@dataclass
class DemoSpecialist:
    slug: str
    name: str
    summary: str
    domain: str
    task: str
    tags: list[str]
    license: str
    train: Callable[[], tuple[bytes, dict[str, Any], str]] = field(repr=False)


def _export(model: Any, n_features: int, *, classifier: bool) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if classifier else None
    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString()


def _sample(x: np.ndarray) -> dict[str, Any]:
    return {"features": np.round(x[:2].astype(np.float32), 4).tolist()}


def _table(names: list[str]) -> str:
    return "\n".join(f"| {i} | {name} |" for i, name in enumerate(names))


def _card(title: str, intended: str, data: str, metric: str, features: list[str], limits: str, outputs: str) -> str:
    return f"""## {title}

{intended}

### Training data
{data}

### Evaluation
{metric}

### Input
One row per example in the `features` tensor (`FP32`, shape `[-1, {len(features)}]`), columns in this order:

| column | feature |
|---|---|
{_table(features)}

### Output
{outputs}

### Limitations
{limits}
"""


def _fit(model: Any, x: np.ndarray, y: np.ndarray, *, test_size: float) -> tuple[Any, np.ndarray, float]:
    """Fit on a fixed split; the fitted model, the held-out inputs and its score on them (accuracy or R²)."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=0)
    model.fit(x_train, y_train)
    return model, x_test, float(model.score(x_test, y_test))


def _train_digits() -> tuple[bytes, dict[str, Any], str]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    model, x_test, acc = _fit(LogisticRegression(max_iter=2000), data.data, data.target, test_size=0.25)
    card = _card(
        "Handwritten digit recognizer (8×8)",
        "Reads a scanned 8×8 grey-level image of a handwritten digit and returns the digit 0–9. "
        "Built for form-processing pipelines that have already segmented each character.",
        "The UCI optical recognition of handwritten digits set (1,797 images from 43 writers), 75% for training.",
        f"Accuracy on 450 held-out images: **{acc:.1%}**.",
        [f"pixel_{r}_{c} (0–16)" for r in range(8) for c in range(8)],
        "Writers outside the original 43 and images not normalised to 8×8 grey levels 0–16 will score lower.",
        "`label` (`INT64`): the digit; `probabilities` (`FP32`, `[-1, 10]`): one score per digit.",
    )
    return _export(model, 64, classifier=True), _sample(x_test), card


def _train_breast_cancer() -> tuple[bytes, dict[str, Any], str]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    data = load_breast_cancer()
    model, x_test, acc = _fit(
        RandomForestClassifier(n_estimators=40, max_depth=6, random_state=0), data.data, data.target, test_size=0.25
    )
    card = _card(
        "Breast mass malignancy screen",
        "Scores the 30 cell-nucleus measurements of a fine-needle aspirate and flags likely malignant masses, "
        "as a second reader for cytology labs. **Not a diagnosis**: a clinician decides.",
        "The Wisconsin Diagnostic Breast Cancer data set (569 cases), 75% for training.",
        f"Accuracy on 143 held-out cases: **{acc:.1%}**.",
        list(data.feature_names),
        "Measurements must come from the same digitised-image protocol; other labs should validate locally.",
        "`label` (`INT64`): 0 malignant, 1 benign; `probabilities` (`FP32`, `[-1, 2]`).",
    )
    return _export(model, 30, classifier=True), _sample(x_test), card


def _train_wine() -> tuple[bytes, dict[str, Any], str]:
    from sklearn.datasets import load_wine
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    data = load_wine()
    model, x_test, acc = _fit(
        make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)), data.data, data.target, test_size=0.3
    )
    card = _card(
        "Wine cultivar classifier",
        "Identifies which of three Italian cultivars a wine comes from, from 13 results of chemical analysis. "
        "Useful for provenance checks in quality-control labs.",
        "The UCI wine recognition data (178 wines from one region of Italy), 70% for training.",
        f"Accuracy on 54 held-out wines: **{acc:.1%}**.",
        list(data.feature_names),
        "Only the three cultivars of the training region are known; other grapes get one of the three labels.",
        "`label` (`INT64`): cultivar 0, 1 or 2; `probabilities` (`FP32`, `[-1, 3]`).",
    )
    return _export(model, 13, classifier=True), _sample(x_test), card


def _train_iris() -> tuple[bytes, dict[str, Any], str]:
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    data = load_iris()
    model, x_test, acc = _fit(
        DecisionTreeClassifier(max_depth=4, random_state=0), data.data, data.target, test_size=0.3
    )
    card = _card(
        "Iris species identifier",
        "Names the species of an iris flower (setosa, versicolor, virginica) from four measurements in centimetres. "
        "A small, fully explainable decision tree for field botany apps and teaching.",
        "Fisher's iris data (150 flowers), 70% for training.",
        f"Accuracy on 45 held-out flowers: **{acc:.1%}**.",
        list(data.feature_names),
        "Only three species are known.",
        "`label` (`INT64`): 0 setosa, 1 versicolor, 2 virginica; `probabilities` (`FP32`, `[-1, 3]`).",
    )
    return _export(model, 4, classifier=True), _sample(x_test), card


def _train_diabetes() -> tuple[bytes, dict[str, Any], str]:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes()
    model, x_test, r2 = _fit(Ridge(alpha=0.1), data.data, data.target, test_size=0.25)
    card = _card(
        "Diabetes progression estimator",
        "Estimates a quantitative measure of disease progression one year after baseline from age, sex, BMI, "
        "blood pressure and six blood serum measurements, for cohort triage in research settings.",
        "The Efron et al. diabetes data (442 patients), features mean-centred and scaled, 75% for training.",
        f"R² on 111 held-out patients: **{r2:.2f}**.",
        list(data.feature_names),
        "Research use: inputs must be scaled exactly as in the original study.",
        "`variable` (`FP32`, `[-1, 1]`): the predicted progression score (roughly 25–350).",
    )
    return _export(model, 10, classifier=False), _sample(x_test), card


def _train_housing() -> tuple[bytes, dict[str, Any], str]:
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(7)
    n = 4000
    income = rng.gamma(4.0, 1.0, n)
    age = rng.uniform(1, 52, n)
    rooms = rng.normal(5.4, 1.2, n).clip(1, 12)
    occupancy = rng.normal(3.0, 0.8, n).clip(1, 8)
    latitude = rng.uniform(32.5, 42.0, n)
    longitude = rng.uniform(-124.3, -114.3, n)
    coast = np.exp(-np.abs(longitude + 122.0) / 2.5)
    price = 0.45 * income + 0.9 * coast + 0.01 * rooms - 0.05 * occupancy - 0.002 * age + rng.normal(0, 0.25, n)
    x = np.column_stack([income, age, rooms, occupancy, latitude, longitude])
    model, x_test, r2 = _fit(
        GradientBoostingRegressor(n_estimators=80, max_depth=3, random_state=0), x, price, test_size=0.25
    )
    card = _card(
        "Coastal house price estimator",
        "Estimates the median house value of a block (in units of $100,000) from income, age, rooms, occupancy "
        "and location. Trained on synthetic data shaped like the California housing survey, for demos and tests "
        "of valuation pipelines.",
        "4,000 synthetic blocks generated with a fixed seed; 75% for training.",
        f"R² on 1,000 held-out blocks: **{r2:.2f}**.",
        ["median_income", "house_age", "avg_rooms", "avg_occupancy", "latitude", "longitude"],
        "Synthetic: do not use for real valuations.",
        "`variable` (`FP32`, `[-1, 1]`): the estimated median value in $100,000s.",
    )
    return _export(model, 6, classifier=False), _sample(x_test), card


def _train_credit() -> tuple[bytes, dict[str, Any], str]:
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=5000, n_features=12, n_informative=7, weights=[0.85, 0.15], random_state=11)
    model, x_test, acc = _fit(LogisticRegression(max_iter=1000, class_weight="balanced"), x, y, test_size=0.25)
    card = _card(
        "Credit default early warning",
        "Scores twelve standardised account-behaviour signals and returns the probability that an account "
        "defaults within twelve months. Class-balanced so that rare defaults are not ignored.",
        "5,000 synthetic accounts with a 15% default rate; 75% for training.",
        f"Accuracy on 1,250 held-out accounts: **{acc:.1%}** (balanced class weights).",
        [f"signal_{i:02d} (standardised)" for i in range(12)],
        "Synthetic: calibrate on your own portfolio before any decision.",
        "`label` (`INT64`): 1 predicted default; `probabilities` (`FP32`, `[-1, 2]`).",
    )
    return _export(model, 12, classifier=True), _sample(x_test), card


SPECIALISTS = [
    DemoSpecialist(
        "digit-recognizer-8x8",
        "Digit Recognizer 8×8",
        "Reads handwritten digits from 8×8 scans.",
        "vision",
        "classification",
        ["ocr", "digits", "forms"],
        "apache-2.0",
        _train_digits,
    ),
    DemoSpecialist(
        "breast-mass-screen",
        "Breast Mass Malignancy Screen",
        "Second-reader screen for fine-needle aspirate measurements.",
        "healthcare",
        "classification",
        ["oncology", "cytology", "screening"],
        "research-only",
        _train_breast_cancer,
    ),
    DemoSpecialist(
        "wine-cultivar",
        "Wine Cultivar Classifier",
        "Tells three Italian cultivars apart from lab assays.",
        "science",
        "classification",
        ["chemistry", "provenance", "food"],
        "mit",
        _train_wine,
    ),
    DemoSpecialist(
        "iris-species",
        "Iris Species Identifier",
        "Explainable decision tree for iris species.",
        "science",
        "classification",
        ["botany", "teaching"],
        "cc-by-4.0",
        _train_iris,
    ),
    DemoSpecialist(
        "diabetes-progression",
        "Diabetes Progression Estimator",
        "One-year disease progression score from baseline measurements.",
        "healthcare",
        "regression",
        ["diabetes", "cohort", "triage"],
        "research-only",
        _train_diabetes,
    ),
    DemoSpecialist(
        "coastal-house-prices",
        "Coastal House Price Estimator",
        "Block-level median house value from income, rooms and location.",
        "finance",
        "regression",
        ["real-estate", "valuation"],
        "commercial",
        _train_housing,
    ),
    DemoSpecialist(
        "credit-default-warning",
        "Credit Default Early Warning",
        "Twelve-month default probability from account behaviour.",
        "finance",
        "classification",
        ["credit", "risk"],
        "commercial",
        _train_credit,
    ),
]


def _user(email: str, name: str, *, staff: bool = False) -> Any:
    from accounts.models import User
    from accounts.services import user_create

    user = User.objects.filter(email=email).first()
    if user is None:
        user = user_create(email=email, password=DEMO_PASSWORD, name=name)
    if staff and not user.is_staff:
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    return user


def _org(user: Any, name: str) -> Any:
    from accounts.models import Organization
    from accounts.services import organization_create

    org = Organization.objects.filter(name=name).first()
    if org is not None:
        return org
    # Signup gave the demo user a personal organization; name it after the demo company instead of adding a
    # second one, so the org switcher starts on the organization that owns the demo data.
    personal = Organization.objects.filter(
        name=f"{user.display_name}'s organization", memberships__user=user, memberships__role="owner"
    ).first()
    if personal is not None:
        from django.utils.text import slugify

        slug = slugify(name)[:60]
        if not Organization.objects.filter(slug=slug).exists():
            personal.name, personal.slug = name, slug
            personal.save(update_fields=["name", "slug"])
            return personal
    return organization_create(user=user, name=name)


def _upload(instructions: dict[str, Any], payload: bytes) -> list[dict[str, Any]] | None:
    """Upload like an API client would: to the presigned URL(s), never through Django."""
    import requests

    if instructions["mode"] == "post":
        response = requests.post(
            instructions["url"], data=instructions["fields"], files={"file": ("model.onnx", payload)}, timeout=60
        )
        response.raise_for_status()
        return None
    parts = []
    size = instructions["part_size"]
    for part in instructions["parts"]:
        start = (part["part_number"] - 1) * size
        response = requests.put(part["url"], data=payload[start : start + size], timeout=60)
        response.raise_for_status()
        parts.append({"part_number": part["part_number"], "etag": response.headers["ETag"]})
    return parts


def _wait_validated(version_id: int, timeout_s: float) -> Any:
    from catalog.models import Version, VersionStatus

    deadline = time.monotonic() + timeout_s
    while True:
        version = Version.objects.get(pk=version_id)
        if version.status not in (VersionStatus.UPLOADING, VersionStatus.VALIDATING):
            return version
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{version} is still {version.status} after {timeout_s:.0f} s: is the Celery worker running?"
            )
        time.sleep(0.5)


def demo_seed(*, timeout_s: float = 300.0, log: Callable[[str], None] = print) -> None:
    from catalog import services as catalog_services
    from catalog.models import Listing, VersionStatus
    from moderation.services import listing_feature, version_approve

    admin = _user("admin@demo.local", "Ada Admin", staff=True)
    publisher = _user("publisher@demo.local", "Pat Publisher")
    buyer = _user("buyer@demo.local", "Bea Buyer")
    northwind = _org(publisher, "Northwind Labs")
    contoso = _org(buyer, "Contoso Analytics")

    for index, spec in enumerate(SPECIALISTS):
        listing = Listing.objects.filter(slug=spec.slug).first()
        if listing is not None and listing.versions.filter(status=VersionStatus.PUBLISHED).exists():
            log(f"  {spec.name}: already published")
            continue
        payload, sample, card = spec.train()
        if listing is None:
            listing = catalog_services.listing_create(
                organization=northwind,
                user=publisher,
                name=spec.name,
                slug=spec.slug,
                summary=spec.summary,
                model_card=card,
                domain=spec.domain,
                task=spec.task,
                tags=spec.tags,
                license=spec.license,
            )
        version = listing.versions.exclude(status__in=[VersionStatus.INVALID, VersionStatus.WITHDRAWN]).first()
        if version is None or version.status == VersionStatus.UPLOADING:
            if version is not None:
                catalog_services.version_withdraw(version=version, actor=publisher, reason="Demo upload restarted.")
            version, instructions = catalog_services.version_create(
                listing=listing,
                user=publisher,
                version=f"1.{len(listing.versions.all())}.0",
                changelog="First release.",
                artifact_size=len(payload),
                artifact_sha256=hashlib.sha256(payload).hexdigest(),
                sample_input=sample,
            )
            parts = _upload(instructions, payload)
            version = catalog_services.version_upload_complete(version=version, user=publisher, parts=parts)
        log(f"  {spec.name}: validating {version.version} ({len(payload) / 1024:.0f} KiB) in the worker")
        version = _wait_validated(version.pk, timeout_s)
        if version.status == VersionStatus.INVALID:
            raise RuntimeError(f"{version} failed validation: {version.status_reason}")
        if version.status == VersionStatus.READY:
            version = catalog_services.version_submit(version=version, user=publisher)
        if version.status == VersionStatus.IN_REVIEW:
            version_approve(version=version, actor=admin, note="Demo data")
        if index < 3:
            listing.refresh_from_db()
            if not listing.is_featured:
                listing_feature(listing=listing, actor=admin, featured=True)
        log(f"  {spec.name}: published")
    _plans_and_subscriptions(publisher=publisher, buyer=buyer, buyer_org=contoso, log=log)
    raw_key = os.environ.get(DEMO_API_KEY_ENV, "").strip()
    if raw_key:
        _demo_api_key(buyer=buyer, buyer_org=contoso, raw_key=raw_key, log=log)
    log("Demo data ready: " + json.dumps({"admin": admin.email, "publisher": publisher.email, "buyer": buyer.email}))


def _plans_and_subscriptions(*, publisher: Any, buyer: Any, buyer_org: Any, log: Callable[[str], None]) -> None:
    """A free plan on every demo listing; the buyer organization subscribes to a few, accepting the license."""
    from billing.models import Plan
    from billing.selectors import subscription_live_get
    from billing.services import plan_create, subscription_create, subscription_periods_renew
    from catalog.models import Listing

    listings = {listing.slug: listing for listing in Listing.objects.filter(slug__in=[s.slug for s in SPECIALISTS])}
    for spec in SPECIALISTS:
        listing = listings.get(spec.slug)
        if listing is None:
            continue
        plan = Plan.objects.filter(listing=listing, name=DEMO_PLAN_NAME, is_active=True).first()
        if plan is None:
            plan = plan_create(
                listing=listing, user=publisher, name=DEMO_PLAN_NAME, monthly_quota_units=DEMO_PLAN_QUOTA_UNITS
            )
        subscribe = spec.slug in DEMO_SUBSCRIBED_SLUGS and listing.is_public
        if subscribe and subscription_live_get(organization=buyer_org, listing=listing) is None:
            subscription_create(
                organization=buyer_org, user=buyer, plan=plan, accept_license=True, ip_address="127.0.0.1"
            )
            log(f"  {buyer_org.name} subscribes to {listing.name} ({DEMO_PLAN_NAME})")
    _paid_plans(publisher=publisher, buyer=buyer, buyer_org=buyer_org, listings=listings, log=log)
    # A demo database that sat for more than a month: roll the free periods forward.
    subscription_periods_renew()


def _paid_plans(
    *, publisher: Any, buyer: Any, buyer_org: Any, listings: dict[str, Any], log: Callable[[str], None]
) -> None:
    """Paid plans on two listings, and one paid subscription bought through the local checkout's test card."""
    from django.conf import settings

    from billing.checkout import checkout_local_pay, checkout_start
    from billing.models import Plan
    from billing.selectors import subscription_live_get
    from billing.services import plan_create

    for slug, plans in DEMO_PAID_PLANS.items():
        listing = listings.get(slug)
        if listing is None:
            continue
        for name, kind, monthly_cents, included, per_1000_cents in plans:
            if not Plan.objects.filter(listing=listing, name=name, is_active=True).exists():
                plan_create(
                    listing=listing,
                    user=publisher,
                    name=name,
                    kind=kind,
                    monthly_quota_units=included,
                    monthly_price_cents=monthly_cents,
                    price_per_1000_units_cents=per_1000_cents,
                )
    slug, plan_name = DEMO_PAID_SUBSCRIPTION
    listing = listings.get(slug)
    if listing is None or not listing.is_public or settings.BILLING_BACKEND != "local":
        return  # with Stripe keys set, a person checks out through Stripe instead
    if subscription_live_get(organization=buyer_org, listing=listing) is not None:
        return
    plan = Plan.objects.get(listing=listing, name=plan_name, is_active=True)
    session = checkout_start(
        organization=buyer_org,
        user=buyer,
        plan=plan,
        accept_license=True,
        ip_address="127.0.0.1",
        success_url="/billing/",
        cancel_url=f"/s/{slug}/",
    )
    checkout_local_pay(session_id=session.session_id, user=buyer, card_number=DEMO_TEST_CARD, ip_address="127.0.0.1")
    log(f"  {buyer_org.name} subscribes to {listing.name} ({plan_name}), paid with the test card")


def _demo_api_key(*, buyer: Any, buyer_org: Any, raw_key: str, log: Callable[[str], None]) -> None:
    from accounts.models import ApiKey, ApiKeyScope
    from accounts.selectors import api_key_authenticate, api_key_parse
    from accounts.services import api_key_import

    parsed = api_key_parse(raw_key=raw_key)
    if parsed is None:
        raise RuntimeError(f"{DEMO_API_KEY_ENV} must look like smk_<12 of a-z0-9>_<32+ URL-safe characters>.")
    existing = ApiKey.objects.filter(public_id=parsed[0]).first()
    if existing is None:
        api_key_import(
            organization=buyer_org,
            user=buyer,
            name=DEMO_API_KEY_NAME,
            raw_key=raw_key,
            scopes=[ApiKeyScope.INFERENCE, ApiKeyScope.MANAGEMENT],
        )
        log(f"  API key {raw_key[:16]}… created for {buyer_org.name}")
    elif api_key_authenticate(raw_key=raw_key) is None:
        log(f"  API key {raw_key[:16]}… exists but is revoked, expired or has another secret: not usable")
