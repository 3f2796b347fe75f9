"""AIME 2025 -> test.parquet, a validation set of the paper: preprocess_utils.DATASETS["aime25"]; options: --help."""

from preprocess_utils import DATASETS, main

SPEC = DATASETS["aime25"]
if __name__ == "__main__":
    main(SPEC)
