"""AIME 2024 -> test.parquet, a validation set of the paper: preprocess_utils.DATASETS["aime24"]; options: --help."""

from preprocess_utils import DATASETS, main

SPEC = DATASETS["aime24"]
if __name__ == "__main__":
    main(SPEC)
