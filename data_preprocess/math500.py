"""MATH-500 -> test.parquet, a validation set of the paper: preprocess_utils.DATASETS["math500"]; options: --help."""

from preprocess_utils import DATASETS, main

SPEC = DATASETS["math500"]
if __name__ == "__main__":
    main(SPEC)
