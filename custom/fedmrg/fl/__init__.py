"""Federated learning on NVIDIA FLARE: update codec, aggregator, site executor, jobs (the only room that imports nvflare)."""
