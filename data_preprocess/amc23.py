"""AMC 2023 -> test.parquet, a validation set of the paper: preprocess_utils.DATASETS["amc23"]; options: --help."""

from preprocess_utils import DATASETS, main

SPEC = DATASETS["amc23"]
if __name__ == "__main__":
    main(SPEC)
