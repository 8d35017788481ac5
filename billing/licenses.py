"""The license terms a buyer accepts when subscribing: one short text and a version per template.

The accepted text is stored verbatim with its SHA-256, so what was agreed can be proven later even if
these texts change. Change a text only together with its version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from catalog.models import LicenseTemplate, Listing


@dataclass(frozen=True)
class LicenseTemplateTerms:
    version: str
    text: str


TEMPLATES: dict[str, LicenseTemplateTerms] = {
    LicenseTemplate.APACHE_2: LicenseTemplateTerms(
        version="2.0-1",
        text=(
            "This specialist is licensed under the Apache License, Version 2.0 "
            "(https://www.apache.org/licenses/LICENSE-2.0). You may use, reproduce, modify and distribute its "
            "outputs and the model, including for commercial purposes, provided that you keep the copyright, "
            "patent, trademark and attribution notices and state significant changes. The license includes a "
            "patent grant from the contributors and is provided AS IS, WITHOUT WARRANTIES OR CONDITIONS OF ANY "
            "KIND. Calls through the marketplace API are also subject to your plan's quota and the platform's "
            "terms of service."
        ),
    ),
    LicenseTemplate.MIT: LicenseTemplateTerms(
        version="1",
        text=(
            "This specialist is licensed under the MIT License (https://opensource.org/license/mit). Permission "
            "is granted, free of charge, to use, copy, modify, merge, publish, distribute, sublicense and sell "
            "copies of the model and its outputs, provided that the copyright notice and this permission notice "
            "are included in all copies or substantial portions. THE MODEL IS PROVIDED AS IS, WITHOUT WARRANTY OF "
            "ANY KIND. Calls through the marketplace API are also subject to your plan's quota and the platform's "
            "terms of service."
        ),
    ),
    LicenseTemplate.CC_BY_4: LicenseTemplateTerms(
        version="4.0-1",
        text=(
            "This specialist is licensed under Creative Commons Attribution 4.0 International "
            "(https://creativecommons.org/licenses/by/4.0/). You may share and adapt the model and its outputs for "
            "any purpose, including commercially, as long as you give appropriate credit to the publisher, link "
            "to the license and indicate if changes were made. No warranties are given. Calls through the "
            "marketplace API are also subject to your plan's quota and the platform's terms of service."
        ),
    ),
    LicenseTemplate.COMMERCIAL: LicenseTemplateTerms(
        version="1",
        text=(
            "Commercial use license. While your organization holds an active subscription, the publisher grants "
            "it a non-exclusive, non-transferable right to call this specialist through the marketplace API and "
            "to use the outputs in its products and internal processes. You may not download, copy, redistribute, "
            "resell or attempt to extract the model, or use the outputs to train a competing model. The "
            "specialist is provided as is; the publisher's liability is limited to the fees paid in the last "
            "twelve months. The right ends when the subscription ends."
        ),
    ),
    LicenseTemplate.RESEARCH: LicenseTemplateTerms(
        version="1",
        text=(
            "Research and evaluation license. Your organization may call this specialist through the marketplace "
            "API for non-commercial research, teaching and evaluation only. No production, clinical, financial or "
            "other commercial decision may rely on its outputs. You may publish results that cite the publisher. "
            "You may not redistribute the model or its outputs as a service. The specialist is provided as is, "
            "without warranty of any kind."
        ),
    ),
    # The publisher's own text is the whole of the terms.
    LicenseTemplate.CUSTOM: LicenseTemplateTerms(version="1", text=""),
}

ADDITIONAL_TERMS_HEADING = "Additional terms from the publisher:"


@dataclass(frozen=True)
class LicenseTerms:
    license: str
    version: str
    text: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"license": self.license, "version": self.version, "text": self.text, "sha256": self.sha256}


def terms_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def license_terms_build(*, license: str, license_text: str) -> LicenseTerms:
    """The exact terms for a listing's license: the template's text, then the publisher's own terms.

    The version is the template's, plus a short hash of the publisher's text when there is one, so a
    changed custom text gets a new version.
    """
    template = TEMPLATES.get(license, TEMPLATES[LicenseTemplate.CUSTOM])
    own = (license_text or "").strip().replace("\r\n", "\n")
    if not template.text:
        text = own or "No terms beyond the platform's terms of service."
    elif own:
        text = f"{template.text}\n\n{ADDITIONAL_TERMS_HEADING}\n{own}"
    else:
        text = template.text
    version = f"{template.version}+{terms_sha256(own)[:8]}" if own else template.version
    return LicenseTerms(license=license, version=version, text=text, sha256=terms_sha256(text))


def license_terms_for_listing(*, listing: Listing) -> LicenseTerms:
    return license_terms_build(license=listing.license, license_text=listing.license_text)
