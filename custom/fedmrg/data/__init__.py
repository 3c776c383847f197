"""Data: IU X-ray reports and their cleaning, annotation files, images, MONAI transforms, datasets
and loaders with training targets, site partitioning, the benchmark builder, synthetic radiographs."""
