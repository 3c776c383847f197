"""The baseline: FedAvg of the same shared parameters sent dense in fp32, with one LoRA adapter whose
A and B are averaged separately (FedIT); no contrastive learning, no specialized adapter, no
compression. Diagnosis-driven and instance-specific prompts stay, as in FedMRG.

    python jobs/fedavg_lora/job.py --data data/demo/bench --sites 3 --config demo --base-llm data/demo/base-llm
"""

import sys

from fedmrg.experiments.methods import FEDAVG_LORA
from fedmrg.fl.recipe import main

if __name__ == "__main__":
    sys.exit(main("fedavg_lora", __doc__, overrides=dict(FEDAVG_LORA)))
