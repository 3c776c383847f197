"""FedMRG for NVIDIA FLARE: federated LLM-driven chest X-ray report generation.

Rooms, imported one way from the bottom up: basics (``errors``, ``config``, ``io``, ``versions``),
``labels``, ``data``, ``eval``, ``model``, ``fl`` (the only room that imports nvflare), then
``experiments`` and ``ops``, and ``cli`` (the ``fedmrg`` command) on top.
"""

__version__ = "0.1.0"
