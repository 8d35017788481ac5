"""Hugging Face Hub import: where hub files are cached, whether the network is used, the token."""

from marketplace.env import VAR_DIR, env

# The hub cache (the layout huggingface_hub uses: models--org--name/{refs,snapshots,blobs}). Offline,
# imports read only what is already there.
HUB_CACHE_DIR = env.path("HUB_CACHE_DIR", default=str(VAR_DIR / "hub-cache"))
# Without a network the Hub is not reachable anyway and the cache is read; True skips even trying.
HUB_OFFLINE = env.bool("HUB_OFFLINE", default=env.bool("HF_HUB_OFFLINE", default=False))
# Reads private and gated repositories this account may read; empty: public ones only.
HUB_TOKEN = env.str("HF_TOKEN", default="") or None
# An import (download and copy to object storage) that runs longer is stopped and the version marked invalid.
HUB_IMPORT_TIMEOUT_S = env.int("HUB_IMPORT_TIMEOUT_S", default=3600)
