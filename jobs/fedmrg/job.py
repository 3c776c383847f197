"""FedMRG on NVIDIA FLARE, every mechanism on: dual adapters with mutual boosting, client-aware
contrastive learning with federated prototypes, diagnosis-driven and instance-specific prompts, and
low-rank (SVD) updates with error feedback, merged exactly by the server.

    python jobs/fedmrg/job.py --data data/demo/bench --sites 3 --config demo --base-llm data/demo/base-llm
    python jobs/fedmrg/job.py --config demo --export --export-dir /tmp/fedmrg_job   # for `nvflare job submit`
"""

import sys

from fedmrg.fl.recipe import main

if __name__ == "__main__":
    sys.exit(main("fedmrg", __doc__))
