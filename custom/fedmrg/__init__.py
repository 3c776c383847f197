"""FedMRG for NVIDIA FLARE: federated LLM-driven chest X-ray report generation.

Rooms: ``data`` (reports, images, benchmark), ``model`` (the report generator), ``fl`` (the only
room that imports nvflare), ``eval`` (metrics), and ``cli`` (the ``fedmrg`` command).
"""

__version__ = "0.1.0"
