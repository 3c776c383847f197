"""The baseline: FedAvg of the same shared parameters sent dense in fp32, with one LoRA adapter whose
A and B are averaged separately (FedIT); no contrastive learning, no specialized adapter, no
compression. Diagnosis-driven and instance-specific prompts stay, as in FedMRG.

    python jobs/fedavg_lora/job.py --data data/demo/bench --sites 3 --config demo --base-llm data/demo/base-llm
"""

import sys

from fedmrg.fl.recipe import main

BASELINE = {"fl.update": "dense", "fl.error_feedback": False, "fl.server_residual": False,
            "model.adapters": "single", "model.contrastive": False, "model.mutual_boosting": 0.0}

if __name__ == "__main__":
    sys.exit(main("fedavg_lora", __doc__, overrides=BASELINE))
