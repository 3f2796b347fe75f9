"""MATH -> train.parquet, test.parquet (the paper's training set): preprocess_utils.DATASETS["math_lighteval"]."""

from preprocess_utils import DATASETS, main

SPEC = DATASETS["math_lighteval"]
if __name__ == "__main__":
    main(SPEC)
