"""GSM8K -> train.parquet, test.parquet: preprocess_utils.DATASETS["gsm8k"]; options: --help."""

from preprocess_utils import DATASETS, main

SPEC = DATASETS["gsm8k"]
if __name__ == "__main__":
    main(SPEC)
