"""Data: report parsing and cleaning, images, MONAI transforms, site partitioning, the benchmark builder."""
