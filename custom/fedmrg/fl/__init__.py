"""Federated learning on NVIDIA FLARE (the only room that imports nvflare): update codec, exact
merge, aggregators, controller, result guard, site trainer and executor, recipe, job command line,
results.

The server side (aggregator, controller, merge, codec, results) imports no transformers, peft,
bitsandbytes or monai.
"""

import warnings

# NVFlare's recipe module takes --export / --export-dir out of sys.argv when it is first imported and
# warns that it did; a job.py declares both options and reads them back (fedmrg.fl.job_cli), so the
# warning says nothing to our users. Installed before any module of this room imports nvflare.recipe.
warnings.filterwarnings("ignore", message="NVFlare reserves '--export'", category=UserWarning)
