"""Federated learning on NVIDIA FLARE (the only room that imports nvflare): update codec, exact
merge, aggregators, controller, result guard, site trainer and executor, recipe, results.

The server side (aggregator, controller, merge, codec, privacy, results) imports no
transformers, peft, bitsandbytes or monai."""
